/* The JSON masking of json-mask (C), independent of the WIT bindings so it
 * can be read and tested on its own. */
#ifndef JSON_MASK_CORE_H
#define JSON_MASK_CORE_H

#include <stdbool.h>
#include <stddef.h>

/* The filter's settings, from its configuration. */
typedef struct {
    char **fields;      /* keys whose values are masked (UTF-8, NUL-terminated) */
    size_t field_count;
    char *mask;         /* the replacement, written as a JSON string */
} json_mask_settings;

/* A configuration problem: `field` is a JSON Pointer, both are static or
 * malloc'd strings the caller frees with json_mask_config_error_free. */
typedef struct {
    char *field;
    char *message;
} json_mask_config_error;

/* Parse `config` (JSON text of `len` bytes) into `settings`. On failure fill
 * `error` and return false; `settings` is then untouched. */
bool json_mask_configure(const char *config, size_t len, json_mask_settings *settings,
                         json_mask_config_error *error);

/* Release what json_mask_configure allocated. */
void json_mask_settings_free(json_mask_settings *settings);
void json_mask_config_error_free(json_mask_config_error *error);

/* Mask `text` (`len` bytes). Returns true and a malloc'd copy in `*out`
 * (`*out_len` bytes) when it is JSON and a value was masked; false when it
 * is not JSON or nothing matched (the message is then forwarded). */
bool json_mask_apply(const json_mask_settings *settings, const char *text, size_t len,
                     char **out, size_t *out_len);

#endif
