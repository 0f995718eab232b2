// strict-greeting-c: a gale health plugin (world `health`, contract
// gale:plugin@0.1.0) written in C.
//
// HAProxy-style rise/fall thresholds, plus: a result carrying a 4xx reply
// code (an SMTP greeting "421 shutting down", an EHLO answered 450, ...)
// takes a healthy backend down at once, whatever `fall` says. Coming back
// always takes `rise` successes in a row.
//
// Settings (strings; TOML numbers arrive as their decimal text):
//   rise       = 1..16, default 2
//   fall       = 1..16, default 3
//   down_codes = "421,450"  codes that take a backend down at once
//                (each 400..499; default: every 4xx; "" = none)
//
// Stateless apart from the settings: `recent` (oldest first) and
// `currently-healthy` carry everything an evaluation needs.

#include "health.h"

#include <stdlib.h>
#include <string.h>

// The longest streak the host's history is guaranteed to hold.
#define MAX_THRESHOLD 16u
#define CODE_MIN 400u
#define CODE_MAX 499u

static struct {
    uint32_t rise;
    uint32_t fall;
    // down[c - CODE_MIN]: reply code c takes the backend down at once.
    bool down[CODE_MAX - CODE_MIN + 1];
} cfg;

// ---------------------------------------------------------------- helpers

// A small bounded string builder; output past the end is cut off.
typedef struct {
    char buf[512];
    size_t len;
} text_t;

static void text_add_n(text_t *t, const char *s, size_t n) {
    size_t room = sizeof t->buf - t->len;
    if (n > room) {
        n = room;
    }
    memcpy(t->buf + t->len, s, n);
    t->len += n;
}

static void text_add(text_t *t, const char *s) {
    text_add_n(t, s, strlen(s));
}

static void text_add_u32(text_t *t, uint32_t v) {
    char digits[10];
    size_t n = 0;
    do {
        digits[sizeof digits - 1 - n] = (char)('0' + v % 10);
        v /= 10;
        n++;
    } while (v != 0);
    text_add_n(t, digits + sizeof digits - n, n);
}

// Hand `t` to the host as an owned string (it frees it after the call).
static void text_to_owned(const text_t *t, health_string_t *out) {
    health_string_dup_n(out, t->buf, t->len);
}

static bool str_eq(const health_string_t *s, const char *lit) {
    size_t n = strlen(lit);
    return s->len == n && memcmp(s->ptr, lit, n) == 0;
}

static bool is_space(uint8_t c) {
    return c == ' ' || c == '\t';
}

// Parse a decimal number from s[0..n) after trimming blanks. Accepts only
// digits (no sign, no hex); fails on empty input or values above 99999.
static bool parse_u32(const uint8_t *s, size_t n, uint32_t *out) {
    while (n > 0 && is_space(s[0])) {
        s++;
        n--;
    }
    while (n > 0 && is_space(s[n - 1])) {
        n--;
    }
    if (n == 0 || n > 5) {
        return false;
    }
    uint32_t v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') {
            return false;
        }
        v = v * 10 + (uint32_t)(s[i] - '0');
    }
    *out = v;
    return true;
}

// "setting `KEY` = "VALUE": " prefix of every error about one value.
static void text_setting(text_t *t, const health_string_t *key, const health_string_t *value) {
    text_add(t, "setting `");
    text_add_n(t, (const char *)key->ptr, key->len);
    text_add(t, "` = \"");
    text_add_n(t, (const char *)value->ptr, value->len);
    text_add(t, "\": ");
}

static bool parse_threshold(const health_string_t *key, const health_string_t *value,
                            uint32_t *out, health_string_t *err) {
    uint32_t v;
    if (!parse_u32(value->ptr, value->len, &v) || v < 1 || v > MAX_THRESHOLD) {
        text_t t = {.len = 0};
        text_setting(&t, key, value);
        text_add(&t, "must be a whole number from 1 to ");
        text_add_u32(&t, MAX_THRESHOLD);
        text_to_owned(&t, err);
        return false;
    }
    *out = v;
    return true;
}

static bool parse_down_codes(const health_string_t *key, const health_string_t *value,
                             health_string_t *err) {
    memset(cfg.down, 0, sizeof cfg.down);
    const uint8_t *s = value->ptr;
    size_t n = value->len;
    // "" (or only blanks): no code takes a backend down at once.
    size_t blanks = 0;
    while (blanks < n && is_space(s[blanks])) {
        blanks++;
    }
    if (blanks == n) {
        return true;
    }
    size_t start = 0;
    for (size_t i = 0; i <= n; i++) {
        if (i < n && s[i] != ',') {
            continue;
        }
        uint32_t code;
        if (!parse_u32(s + start, i - start, &code) || code < CODE_MIN || code > CODE_MAX) {
            text_t t = {.len = 0};
            text_setting(&t, key, value);
            text_add(&t, "expected a comma-separated list of 4xx reply codes (400 to 499), "
                         "got \"");
            text_add_n(&t, (const char *)s + start, i - start);
            text_add(&t, "\"");
            text_to_owned(&t, err);
            return false;
        }
        cfg.down[code - CODE_MIN] = true;
        start = i + 1;
    }
    return true;
}

static void log_ready(void) {
    text_t rise = {.len = 0};
    text_t fall = {.len = 0};
    text_t codes = {.len = 0};
    text_add_u32(&rise, cfg.rise);
    text_add_u32(&fall, cfg.fall);
    uint32_t count = 0;
    for (uint32_t c = CODE_MIN; c <= CODE_MAX; c++) {
        if (cfg.down[c - CODE_MIN]) {
            if (count++ > 0) {
                text_add(&codes, ",");
            }
            text_add_u32(&codes, c);
        }
    }
    if (count == CODE_MAX - CODE_MIN + 1) {
        codes.len = 0;
        text_add(&codes, "4xx");
    } else if (count == 0) {
        text_add(&codes, "none");
    }
    health_tuple2_string_string_t fields[3] = {
        {{(uint8_t *)"rise", 4}, {(uint8_t *)rise.buf, rise.len}},
        {{(uint8_t *)"fall", 4}, {(uint8_t *)fall.buf, fall.len}},
        {{(uint8_t *)"down_codes", 10}, {(uint8_t *)codes.buf, codes.len}},
    };
    health_list_tuple2_string_string_t list = {fields, 3};
    health_string_t message;
    health_string_set(&message, "strict-greeting-c ready");
    gale_plugin_host_log(GALE_PLUGIN_HOST_LEVEL_INFO, &message, &list);
}

// ---------------------------------------------------------------- exports

bool exports_gale_plugin_evaluator_init(exports_gale_plugin_evaluator_settings_t *settings,
                                        health_string_t *err) {
    cfg.rise = 2;
    cfg.fall = 3;
    for (uint32_t c = CODE_MIN; c <= CODE_MAX; c++) {
        cfg.down[c - CODE_MIN] = true;
    }

    bool ok = true;
    for (size_t i = 0; ok && i < settings->len; i++) {
        const health_string_t *key = &settings->ptr[i].f0;
        const health_string_t *value = &settings->ptr[i].f1;
        if (str_eq(key, "rise")) {
            ok = parse_threshold(key, value, &cfg.rise, err);
        } else if (str_eq(key, "fall")) {
            ok = parse_threshold(key, value, &cfg.fall, err);
        } else if (str_eq(key, "down_codes")) {
            ok = parse_down_codes(key, value, err);
        } else {
            text_t t = {.len = 0};
            text_add(&t, "unknown setting `");
            text_add_n(&t, (const char *)key->ptr, key->len);
            text_add(&t, "` (known: rise, fall, down_codes)");
            text_to_owned(&t, err);
            ok = false;
        }
    }
    if (ok) {
        log_ready();
    }
    // The settings are ours to free (the canonical ABI hands over ownership).
    exports_gale_plugin_evaluator_settings_free(settings);
    return ok;
}

// A reply code that takes a backend down at once.
static bool down_code(const exports_gale_plugin_evaluator_probe_result_t *r) {
    return r->code.is_some && r->code.val >= CODE_MIN && r->code.val <= CODE_MAX &&
           cfg.down[r->code.val - CODE_MIN];
}

// A success: the probe or session went well and carried no down code.
static bool success(const exports_gale_plugin_evaluator_probe_result_t *r) {
    return r->ok && !down_code(r);
}

static bool next_state(bool healthy, const exports_gale_plugin_evaluator_list_probe_result_t *recent) {
    size_t n = recent->len;
    const exports_gale_plugin_evaluator_probe_result_t *r = recent->ptr;
    if (healthy) {
        // The trailing run of failures, newest first: `fall` of them, or
        // any one with a down code, takes the backend down.
        uint32_t failures = 0;
        for (size_t i = n; i > 0 && !success(&r[i - 1]); i--) {
            if (down_code(&r[i - 1])) {
                return false;
            }
            if (++failures >= cfg.fall) {
                return false;
            }
        }
        return true;
    }
    // Down (by `fall` or by a down code): `rise` successes in a row.
    uint32_t successes = 0;
    for (size_t i = n; i > 0 && success(&r[i - 1]); i--) {
        if (++successes >= cfg.rise) {
            return true;
        }
    }
    return false;
}

void exports_gale_plugin_evaluator_evaluate(exports_gale_plugin_evaluator_backend_t *backend,
                                            bool currently_healthy,
                                            exports_gale_plugin_evaluator_list_probe_result_t *recent,
                                            exports_gale_plugin_evaluator_health_verdict_t *ret) {
    ret->healthy = next_state(currently_healthy, recent);
    ret->weight.is_some = false;
    ret->weight.val = 0;
    exports_gale_plugin_evaluator_backend_free(backend);
    exports_gale_plugin_evaluator_list_probe_result_free(recent);
}
