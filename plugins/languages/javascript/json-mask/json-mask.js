// json-mask, in JavaScript: replaces the values of chosen keys in JSON text
// messages, at any depth, with a mask. Non-JSON text, binary and control
// messages pass unchanged. Built into a component by componentize-js against
// the wsgate:plugin `message-filter` world (see build.mjs).

import { write } from 'wsgate:plugin/log@0.1.0';

const settings = { fields: new Set(), mask: '***' };

function configError(field, message) {
  // componentize-js turns a thrown value into the `err` case of a result.
  return { field, message };
}

export const lifecycle = {
  configure(text) {
    let config;
    try {
      config = JSON.parse(text);
    } catch (error) {
      throw configError('', `the configuration is not JSON: ${error.message}`);
    }
    if (config === null || typeof config !== 'object' || Array.isArray(config)) {
      throw configError('', 'the configuration must be a table');
    }
    for (const key of Object.keys(config)) {
      if (key !== 'fields' && key !== 'mask') {
        throw configError(`/${key}`, 'unknown field; expected `fields` or `mask`');
      }
    }
    const fields = config.fields;
    if (!Array.isArray(fields) || fields.length === 0 || !fields.every((f) => typeof f === 'string')) {
      throw configError('/fields', 'required: a non-empty list of key names');
    }
    if (config.mask !== undefined && typeof config.mask !== 'string') {
      throw configError('/mask', 'the mask must be a string');
    }
    settings.fields = new Set(fields);
    settings.mask = config.mask ?? '***';
    write('debug', `json-mask (javascript) masks ${fields.length} keys`);
  },
};

/** Mask matching keys in `value` in place; true when anything changed. */
function mask(value) {
  let changed = false;
  if (Array.isArray(value)) {
    for (const item of value) {
      changed = mask(item) || changed;
    }
  } else if (value !== null && typeof value === 'object') {
    for (const key of Object.keys(value)) {
      if (settings.fields.has(key)) {
        value[key] = settings.mask;
        changed = true;
      } else {
        changed = mask(value[key]) || changed;
      }
    }
  }
  return changed;
}

export const message = {
  onMessage(direction, msg) {
    if (msg.tag !== 'text') {
      return { tag: 'forward' };
    }
    let document;
    try {
      document = JSON.parse(msg.val);
    } catch {
      return { tag: 'forward' };
    }
    if (!mask(document)) {
      return { tag: 'forward' };
    }
    return { tag: 'replace', val: [{ tag: 'text', val: JSON.stringify(document) }] };
  },
};
