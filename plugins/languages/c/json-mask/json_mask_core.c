/* A small validating JSON scanner that copies its input, replacing the
 * values of configured keys with a mask. Strings are compared after
 * unescaping, so "pass\u0077ord" matches `password`. */
#include "json_mask_core.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAX_DEPTH 256

/* A growable output buffer; `failed` records an allocation failure. */
typedef struct {
    char *data;
    size_t len, cap;
    bool failed;
} buffer;

static void buffer_put(buffer *b, const char *bytes, size_t n) {
    if (b->failed || n == 0) return;
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 256;
        while (cap < b->len + n) cap *= 2;
        char *data = realloc(b->data, cap);
        if (!data) {
            b->failed = true;
            return;
        }
        b->data = data;
        b->cap = cap;
    }
    memcpy(b->data + b->len, bytes, n);
    b->len += n;
}

/* The scanner: input, position, and where copied text goes (NULL: nowhere). */
typedef struct {
    const char *text;
    size_t len, pos;
    buffer *out;
    const json_mask_settings *settings;
    bool changed;
} scanner;

static void skip_ws(scanner *s) {
    while (s->pos < s->len) {
        char c = s->text[s->pos];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
        s->pos++;
    }
}

/* Copy input bytes [from, s->pos) to the output, if any. */
static void copy_since(scanner *s, size_t from) {
    if (s->out) buffer_put(s->out, s->text + from, s->pos - from);
}

static int hex_value(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static bool read_hex4(scanner *s, uint32_t *value) {
    if (s->pos + 4 > s->len) return false;
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        int h = hex_value(s->text[s->pos + i]);
        if (h < 0) return false;
        v = v * 16 + (uint32_t)h;
    }
    s->pos += 4;
    *value = v;
    return true;
}

static void put_utf8(buffer *b, uint32_t cp) {
    char bytes[4];
    size_t n;
    if (cp < 0x80) {
        bytes[0] = (char)cp;
        n = 1;
    } else if (cp < 0x800) {
        bytes[0] = (char)(0xC0 | (cp >> 6));
        bytes[1] = (char)(0x80 | (cp & 0x3F));
        n = 2;
    } else if (cp < 0x10000) {
        bytes[0] = (char)(0xE0 | (cp >> 12));
        bytes[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        bytes[2] = (char)(0x80 | (cp & 0x3F));
        n = 3;
    } else {
        bytes[0] = (char)(0xF0 | (cp >> 18));
        bytes[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
        bytes[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
        bytes[3] = (char)(0x80 | (cp & 0x3F));
        n = 4;
    }
    buffer_put(b, bytes, n);
}

/* Scan a string at s->pos (which is '"'), validating escapes. When `decoded`
 * is not NULL the unescaped UTF-8 is appended to it. Copies the raw text. */
static bool scan_string(scanner *s, buffer *decoded) {
    size_t start = s->pos;
    if (s->pos >= s->len || s->text[s->pos] != '"') return false;
    s->pos++;
    while (s->pos < s->len) {
        unsigned char c = (unsigned char)s->text[s->pos];
        if (c == '"') {
            s->pos++;
            copy_since(s, start);
            return true;
        }
        if (c < 0x20) return false;
        if (c != '\\') {
            if (decoded) buffer_put(decoded, (const char *)&s->text[s->pos], 1);
            s->pos++;
            continue;
        }
        s->pos++;
        if (s->pos >= s->len) return false;
        char e = s->text[s->pos++];
        const char *simple = NULL;
        switch (e) {
            case '"': simple = "\""; break;
            case '\\': simple = "\\"; break;
            case '/': simple = "/"; break;
            case 'b': simple = "\b"; break;
            case 'f': simple = "\f"; break;
            case 'n': simple = "\n"; break;
            case 'r': simple = "\r"; break;
            case 't': simple = "\t"; break;
            case 'u': {
                uint32_t cp;
                if (!read_hex4(s, &cp)) return false;
                if (cp >= 0xD800 && cp <= 0xDBFF && s->pos + 6 <= s->len &&
                    s->text[s->pos] == '\\' && s->text[s->pos + 1] == 'u') {
                    size_t back = s->pos;
                    uint32_t low;
                    s->pos += 2;
                    if (read_hex4(s, &low) && low >= 0xDC00 && low <= 0xDFFF) {
                        cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
                    } else {
                        s->pos = back;
                    }
                }
                if (decoded) put_utf8(decoded, cp);
                continue;
            }
            default: return false;
        }
        if (decoded) buffer_put(decoded, simple, 1);
    }
    return false;
}

static bool scan_literal(scanner *s, const char *word) {
    size_t n = strlen(word);
    if (s->pos + n > s->len || memcmp(s->text + s->pos, word, n) != 0) return false;
    size_t start = s->pos;
    s->pos += n;
    copy_since(s, start);
    return true;
}

static bool is_digit(scanner *s) {
    return s->pos < s->len && s->text[s->pos] >= '0' && s->text[s->pos] <= '9';
}

static bool scan_number(scanner *s) {
    size_t start = s->pos;
    if (s->pos < s->len && s->text[s->pos] == '-') s->pos++;
    if (!is_digit(s)) return false;
    if (s->text[s->pos] == '0') {
        s->pos++;
    } else {
        while (is_digit(s)) s->pos++;
    }
    if (s->pos < s->len && s->text[s->pos] == '.') {
        s->pos++;
        if (!is_digit(s)) return false;
        while (is_digit(s)) s->pos++;
    }
    if (s->pos < s->len && (s->text[s->pos] == 'e' || s->text[s->pos] == 'E')) {
        s->pos++;
        if (s->pos < s->len && (s->text[s->pos] == '+' || s->text[s->pos] == '-')) s->pos++;
        if (!is_digit(s)) return false;
        while (is_digit(s)) s->pos++;
    }
    copy_since(s, start);
    return true;
}

static bool scan_value(scanner *s, int depth);

static bool is_masked(const json_mask_settings *settings, const buffer *key) {
    for (size_t i = 0; i < settings->field_count; i++) {
        const char *field = settings->fields[i];
        if (strlen(field) == key->len && memcmp(field, key->data, key->len) == 0) return true;
    }
    return false;
}

/* Write `text` as a JSON string. */
static void put_json_string(buffer *b, const char *text) {
    buffer_put(b, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)text; *p; p++) {
        if (*p == '"' || *p == '\\') {
            char escaped[2] = {'\\', (char)*p};
            buffer_put(b, escaped, 2);
        } else if (*p < 0x20) {
            static const char hex[] = "0123456789abcdef";
            char escaped[6] = {'\\', 'u', '0', '0', hex[*p >> 4], hex[*p & 15]};
            buffer_put(b, escaped, 6);
        } else {
            buffer_put(b, (const char *)p, 1);
        }
    }
    buffer_put(b, "\"", 1);
}

static bool scan_object(scanner *s, int depth) {
    size_t start = s->pos++;
    skip_ws(s);
    copy_since(s, start);
    if (s->pos < s->len && s->text[s->pos] == '}') {
        s->pos++;
        copy_since(s, s->pos - 1);
        return true;
    }
    buffer key = {0};
    bool ok = false;
    for (;;) {
        size_t ws = s->pos;
        skip_ws(s);
        copy_since(s, ws);
        key.len = 0;
        if (!scan_string(s, &key) || key.failed) break;
        ws = s->pos;
        skip_ws(s);
        if (s->pos >= s->len || s->text[s->pos] != ':') break;
        s->pos++;
        skip_ws(s);
        copy_since(s, ws);
        if (is_masked(s->settings, &key)) {
            buffer *out = s->out;
            s->out = NULL;
            bool valid = scan_value(s, depth + 1);
            s->out = out;
            if (!valid) break;
            if (out) put_json_string(out, s->settings->mask);
            s->changed = true;
        } else if (!scan_value(s, depth + 1)) {
            break;
        }
        ws = s->pos;
        skip_ws(s);
        copy_since(s, ws);
        if (s->pos < s->len && s->text[s->pos] == ',') {
            s->pos++;
            copy_since(s, s->pos - 1);
            continue;
        }
        if (s->pos < s->len && s->text[s->pos] == '}') {
            s->pos++;
            copy_since(s, s->pos - 1);
            ok = true;
        }
        break;
    }
    free(key.data);
    return ok;
}

static bool scan_array(scanner *s, int depth) {
    size_t start = s->pos++;
    skip_ws(s);
    copy_since(s, start);
    if (s->pos < s->len && s->text[s->pos] == ']') {
        s->pos++;
        copy_since(s, s->pos - 1);
        return true;
    }
    for (;;) {
        if (!scan_value(s, depth + 1)) return false;
        size_t ws = s->pos;
        skip_ws(s);
        if (s->pos < s->len && s->text[s->pos] == ',') {
            s->pos++;
            skip_ws(s);
            copy_since(s, ws);
            continue;
        }
        if (s->pos < s->len && s->text[s->pos] == ']') {
            s->pos++;
            copy_since(s, ws);
            return true;
        }
        return false;
    }
}

static bool scan_value(scanner *s, int depth) {
    if (depth > MAX_DEPTH || s->pos >= s->len) return false;
    switch (s->text[s->pos]) {
        case '{': return scan_object(s, depth);
        case '[': return scan_array(s, depth);
        case '"': return scan_string(s, NULL);
        case 't': return scan_literal(s, "true");
        case 'f': return scan_literal(s, "false");
        case 'n': return scan_literal(s, "null");
        default: return scan_number(s);
    }
}

bool json_mask_apply(const json_mask_settings *settings, const char *text, size_t len,
                     char **out, size_t *out_len) {
    buffer output = {0};
    scanner s = {.text = text, .len = len, .out = &output, .settings = settings};
    skip_ws(&s);
    copy_since(&s, 0);
    bool valid = scan_value(&s, 0);
    size_t ws = s.pos;
    skip_ws(&s);
    copy_since(&s, ws);
    if (!valid || s.pos != len || !s.changed || output.failed) {
        free(output.data);
        return false;
    }
    *out = output.data;
    *out_len = output.len;
    return true;
}

/* ---- configuration ---- */

static char *dup_string(const char *text) {
    size_t n = strlen(text) + 1;
    char *copy = malloc(n);
    if (copy) memcpy(copy, text, n);
    return copy;
}

static bool config_fail(json_mask_config_error *error, const char *field, const char *message) {
    error->field = dup_string(field);
    error->message = dup_string(message);
    return false;
}

/* Take the decoded string in `b` as a NUL-terminated malloc'd string. */
static char *take_string(buffer *b) {
    buffer_put(b, "", 1);
    if (b->failed) {
        free(b->data);
        return NULL;
    }
    char *text = b->data;
    *b = (buffer){0};
    return text;
}

static bool parse_fields(scanner *s, json_mask_settings *parsed, json_mask_config_error *error) {
    const char *wrong = "required: a non-empty list of key names";
    if (s->pos >= s->len || s->text[s->pos] != '[') return config_fail(error, "/fields", wrong);
    s->pos++;
    skip_ws(s);
    if (s->pos < s->len && s->text[s->pos] == ']') return config_fail(error, "/fields", wrong);
    for (;;) {
        skip_ws(s);
        buffer field = {0};
        if (!scan_string(s, &field)) {
            free(field.data);
            return config_fail(error, "/fields", wrong);
        }
        char **fields = realloc(parsed->fields, (parsed->field_count + 1) * sizeof *fields);
        char *text = take_string(&field);
        if (!fields || !text) {
            free(text);
            if (fields) parsed->fields = fields;
            return config_fail(error, "/fields", "out of memory");
        }
        parsed->fields = fields;
        parsed->fields[parsed->field_count++] = text;
        skip_ws(s);
        if (s->pos < s->len && s->text[s->pos] == ',') {
            s->pos++;
            continue;
        }
        if (s->pos < s->len && s->text[s->pos] == ']') {
            s->pos++;
            return true;
        }
        return config_fail(error, "/fields", wrong);
    }
}

static bool parse_config(scanner *s, json_mask_settings *parsed, json_mask_config_error *error) {
    skip_ws(s);
    if (s->pos >= s->len || s->text[s->pos] != '{')
        return config_fail(error, "", "the configuration must be a table");
    s->pos++;
    skip_ws(s);
    bool empty = s->pos < s->len && s->text[s->pos] == '}';
    if (empty) s->pos++;
    while (!empty) {
        skip_ws(s);
        buffer key = {0};
        if (!scan_string(s, &key) || key.failed) {
            free(key.data);
            return config_fail(error, "", "the configuration is not JSON");
        }
        char *name = take_string(&key);
        if (!name) return config_fail(error, "", "out of memory");
        skip_ws(s);
        if (s->pos >= s->len || s->text[s->pos] != ':') {
            free(name);
            return config_fail(error, "", "the configuration is not JSON");
        }
        s->pos++;
        skip_ws(s);
        bool ok;
        if (strcmp(name, "fields") == 0) {
            ok = parse_fields(s, parsed, error);
        } else if (strcmp(name, "mask") == 0) {
            buffer mask = {0};
            ok = s->pos < s->len && s->text[s->pos] == '"' && scan_string(s, &mask);
            if (ok) {
                free(parsed->mask);
                parsed->mask = take_string(&mask);
                ok = parsed->mask != NULL;
            } else {
                free(mask.data);
            }
            if (!ok) config_fail(error, "/mask", "the mask must be a string");
        } else {
            char field[256] = "/";
            strncat(field, name, sizeof field - 2);
            ok = config_fail(error, field, "unknown field; expected `fields` or `mask`");
        }
        free(name);
        if (!ok) return false;
        skip_ws(s);
        if (s->pos < s->len && s->text[s->pos] == ',') {
            s->pos++;
            continue;
        }
        if (s->pos < s->len && s->text[s->pos] == '}') {
            s->pos++;
            break;
        }
        return config_fail(error, "", "the configuration is not JSON");
    }
    if (parsed->field_count == 0)
        return config_fail(error, "/fields", "required: a non-empty list of key names");
    if (!parsed->mask) parsed->mask = dup_string("***");
    if (!parsed->mask) return config_fail(error, "", "out of memory");
    return true;
}

bool json_mask_configure(const char *config, size_t len, json_mask_settings *settings,
                         json_mask_config_error *error) {
    json_mask_settings parsed = {0};
    scanner s = {.text = config, .len = len};
    if (!parse_config(&s, &parsed, error)) {
        json_mask_settings_free(&parsed);
        return false;
    }
    json_mask_settings_free(settings);
    *settings = parsed;
    return true;
}

void json_mask_settings_free(json_mask_settings *settings) {
    for (size_t i = 0; i < settings->field_count; i++) free(settings->fields[i]);
    free(settings->fields);
    free(settings->mask);
    *settings = (json_mask_settings){0};
}

void json_mask_config_error_free(json_mask_config_error *error) {
    free(error->field);
    free(error->message);
    *error = (json_mask_config_error){0};
}
