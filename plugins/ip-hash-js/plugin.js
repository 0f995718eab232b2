// ip-hash-js: a gale balancer (world `balancer` of gale:plugin@0.1.0) in
// JavaScript. Sticky by client IP with weighted rendezvous
// (highest-random-weight) hashing.
//
// For every eligible backend (healthy, not draining, weight > 0):
//
//   h     = mix(hash(client ip), hash(backend name))   32 bits
//   u     = (h + 0.5) / 2^32                            uniform in (0, 1)
//   score = -weight / ln(u)                             higher is better
//
// A backend wins a client IP with probability weight / sum(weights), and
// its score for that IP depends on nothing but the IP, its name, its weight
// and the seed: adding, removing or reordering other backends never changes
// it, so a backend that leaves moves only its own clients, and one that
// joins takes clients only from the others. The name is hashed (not the
// pool index), so a reordered pool keeps every client where it was.
//
// The answer lists every eligible backend: the lowest `priority` tier that
// has one first, best score first, then the higher tiers in turn, each by
// score, so the host's retries follow the same rendezvous order.

// Built against the 0.1.0 contract (see build.mjs): a host of any 0.1.x
// satisfies it.
import { log } from 'gale:plugin/host@0.1.0';

// ---- 32-bit murmur3 pieces (Math.imul keeps everything in int32). ----

const C1 = 0xcc9e2d51;
const C2 = 0x1b873593;

function mixK(k) {
  k = Math.imul(k, C1);
  k = (k << 15) | (k >>> 17);
  return Math.imul(k, C2);
}

function mixH(h, k) {
  h ^= mixK(k);
  h = (h << 13) | (h >>> 19);
  return (Math.imul(h, 5) + 0xe6546b64) | 0;
}

function fmix(h, len) {
  h ^= len;
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

// murmur3_x86_32 of the UTF-8 bytes of `s`. Runs in set-pool only.
function hashString(s, seed) {
  const bytes = [];
  for (const ch of s) {
    let c = ch.codePointAt(0);
    if (c < 0x80) {
      bytes.push(c);
    } else if (c < 0x800) {
      bytes.push(0xc0 | (c >> 6), 0x80 | (c & 63));
    } else if (c < 0x10000) {
      bytes.push(0xe0 | (c >> 12), 0x80 | ((c >> 6) & 63), 0x80 | (c & 63));
    } else {
      bytes.push(
        0xf0 | (c >> 18),
        0x80 | ((c >> 12) & 63),
        0x80 | ((c >> 6) & 63),
        0x80 | (c & 63),
      );
    }
  }
  const n = bytes.length;
  let h = seed | 0;
  let i = 0;
  for (; i + 4 <= n; i += 4) {
    h = mixH(h, bytes[i] | (bytes[i + 1] << 8) | (bytes[i + 2] << 16) | (bytes[i + 3] << 24));
  }
  let k = 0;
  switch (n & 3) {
    case 3:
      k ^= bytes[i + 2] << 16;
    // falls through
    case 2:
      k ^= bytes[i + 1] << 8;
    // falls through
    case 1:
      k ^= bytes[i];
      h ^= mixK(k);
  }
  return fmix(h, n);
}

// ---- state ----

const U32_MAX = 4294967295;
const TWO_32 = 4294967296;
const MASK64 = 0xffffffffn;
const V4_MAPPED = 0xffffn; // ::ffff:a.b.c.d

let seed = 0;

// The eligible backends of the last pool, grouped by priority tier (lowest
// first), as parallel typed arrays, so that select allocates nothing of
// its own.
let count = 0;
let ids = new Uint32Array(0);
let nameHash = new Int32Array(0); // murmur3 of the name, pre-mixed
let invWeight = new Float64Array(0); // 1 / weight
// Tier t is [tierStart[t], tierStart[t + 1]); `uniform[t]` when all its
// weights are equal, and `tierKeys[t]` is its slice of `keys`.
let tiers = 0;
let tierStart = new Uint32Array(1);
let uniform = new Uint8Array(0);
let tierKeys = [];
// Sort keys, one per backend, best first when sorted ascending; the low
// INDEX_BITS bits carry the backend's index within its tier. `keyWords`
// views the same bytes as 32-bit words (little-endian: low word first).
const INDEX_BITS = 20;
const INDEX_MASK = (1 << INDEX_BITS) - 1;
const MAX_POOL = 1 << INDEX_BITS;
let keys = new Float64Array(0);
let keyWords = new Uint32Array(0);
// The answer: a typed array is copied into the result in one go, where a
// plain Array is checked and stored element by element.
let answer = new Uint32Array(0);

// ---- the three exports ----

// result<_, string> as the bindings take it (a thrown string works too).
const OK = { tag: 'ok', val: undefined };
const err = (val) => ({ tag: 'err', val });

function init(settings) {
  for (const [key, value] of settings) {
    if (key === 'seed') {
      const v = value.trim();
      if (!/^[0-9]{1,10}$/.test(v) || Number(v) > U32_MAX) {
        return err(`setting \`seed\`: expected an integer from 0 to ${U32_MAX}, got \`${value}\``);
      }
      seed = Number(v) | 0;
    } else {
      return err(`unknown setting \`${key}\``);
    }
  }
  log('info', 'ip-hash-js ready: weighted rendezvous hashing on client IP', [
    ['seed', String(seed >>> 0)],
  ]);
  return OK;
}

function setPool(pool, _listeners) {
  const eligible = pool
    .filter((b) => b.healthy && !b.draining && b.weight > 0)
    .slice(0, MAX_POOL)
    .sort((a, b) => a.priority - b.priority);
  count = eligible.length;
  ids = new Uint32Array(count);
  nameHash = new Int32Array(count);
  invWeight = new Float64Array(count);
  keys = new Float64Array(count);
  keyWords = new Uint32Array(keys.buffer);
  answer = new Uint32Array(count);
  const starts = [];
  const flat = [];
  eligible.forEach((b, i) => {
    if (i === 0 || b.priority !== eligible[i - 1].priority) {
      starts.push(i);
      flat.push(1);
    } else if (b.weight !== eligible[i - 1].weight) {
      flat[flat.length - 1] = 0;
    }
    ids[i] = b.id;
    nameHash[i] = mixK(hashString(b.name, seed));
    invWeight[i] = 1 / b.weight;
  });
  tiers = starts.length;
  tierStart = Uint32Array.from([...starts, count]);
  uniform = Uint8Array.from(flat);
  tierKeys = starts.map((a, t) => keys.subarray(a, tierStart[t + 1]));
}

function select(ctx) {
  // Hash the client IP once (murmur3 over its 32-bit words). An
  // IPv4-mapped IPv6 address hashes as the IPv4 address it carries.
  const ip = ctx.clientIp;
  let h;
  if (ip.tag === 'v4') {
    h = fmix(mixH(seed, ip.val), 4);
  } else {
    const hi = ip.val[0];
    const lo = ip.val[1];
    if (hi === 0n && lo >> 32n === V4_MAPPED) {
      h = fmix(mixH(seed, Number(lo & MASK64)), 4);
    } else {
      let x = mixH(seed, Number(hi >> 32n));
      x = mixH(x, Number(hi & MASK64));
      x = mixH(x, Number(lo >> 32n));
      x = mixH(x, Number(lo & MASK64));
      h = fmix(x, 16);
    }
  }

  // Per tier: one key per backend, then the engine's native numeric sort
  // (a comparator would run in the interpreter).
  for (let t = 0; t < tiers; t++) {
    const a = tierStart[t];
    const b = tierStart[t + 1];
    if (uniform[t]) {
      // Equal weights: -w / ln(u) grows with u, so the hash alone orders
      // the tier. Key: (2^32 - 1 - x) * 2^20 + index, an exact integer.
      for (let i = a; i < b; i++) {
        let x = (h ^ nameHash[i]) | 0;
        x = (x << 13) | (x >>> 19);
        x = fmix((Math.imul(x, 5) + 0xe6546b64) | 0, 8);
        keys[i] = (U32_MAX - x) * MAX_POOL + (i - a);
      }
      tierKeys[t].sort();
      for (let i = a; i < b; i++) answer[i] = ids[a + (keys[i] % MAX_POOL)];
    } else {
      // Weighted: key = -ln(u) / w, the inverse of the score, a positive
      // double; its lowest mantissa bits are replaced by the index, which
      // keeps the order (up to 2^-32 relative) and rides along the sort.
      for (let i = a; i < b; i++) {
        let x = (h ^ nameHash[i]) | 0;
        x = (x << 13) | (x >>> 19);
        x = fmix((Math.imul(x, 5) + 0xe6546b64) | 0, 8);
        keys[i] = -Math.log((x + 0.5) / TWO_32) * invWeight[i];
        keyWords[2 * i] = (keyWords[2 * i] & ~INDEX_MASK) | (i - a);
      }
      tierKeys[t].sort();
      for (let i = a; i < b; i++) answer[i] = ids[a + (keyWords[2 * i] & INDEX_MASK)];
    }
  }
  return answer;
}

export const selector = { init, setPool, select };
