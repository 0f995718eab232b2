// {{name}}: a gale balancer in JavaScript (world `balancer` of
// gale:plugin). gale asks `select` once per SMTP session or HTTP request
// for the backends to try, best first; it tries them in that order without
// asking again. Build with `npm install && node build.mjs`, then
// `gale plugin check {{name}}.wasm`.
import { log } from 'gale:plugin/host@{{contract}}';

let pool = [];

export const selector = {
  init(settings) {
    for (const [key] of settings) {
      throw `unknown setting \`${key}\``;
    }
    log('info', '{{name}} ready', []);
  },

  setPool(backends, _listeners) {
    pool = backends;
  },

  // Every backend that may take the session: the lowest priority tier first
  // (standbys after primaries), heavier backends first.
  select(_ctx) {
    return pool
      .filter((b) => b.healthy && !b.draining && b.weight > 0)
      .sort((a, b) => a.priority - b.priority || b.weight - a.weight)
      .map((b) => b.id);
  },
};
