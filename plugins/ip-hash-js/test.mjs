// Property tests of plugin.js under Node, without building the component:
//
//   node test.mjs
//
// The host import is replaced by a stub; everything else is the plugin's
// own code. Checks settings, the answer's shape, tiers, stickiness across
// reorders, weighted shares, and that a backend leaving or joining moves
// only the clients it must.
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const source = readFileSync(fileURLToPath(new URL('plugin.js', import.meta.url)), 'utf8');
const imp = "import { log } from 'gale:plugin/host@0.1.0';";
assert.ok(source.includes(imp), 'plugin.js imports log as expected');
const logged = [];
globalThis.__galeLog = (level, message, fields) => logged.push({ level, message, fields });
const dir = mkdtempSync(join(tmpdir(), 'ip-hash-js-test-'));

// A fresh module instance per call: module state is the plugin instance.
let n = 0;
async function instance() {
  const file = join(dir, `plugin-${n++}.mjs`);
  writeFileSync(file, source.replace(imp, 'const log = (...a) => globalThis.__galeLog(...a);'));
  return (await import(pathToFileURL(file).href)).selector;
}

const backend = (id, name, over = {}) => ({
  id, name, address: `127.0.0.1:${2600 + id}`, weight: 1, priority: 0,
  healthy: true, draining: false, ...over,
});
const pool = (specs) => specs.map((s, i) => backend(i, s.name, s));
const v4 = (n) => ({ tag: 'v4', val: n >>> 0 });
const ctx = (ip) => ({ protocol: 'smtp', listener: 0, clientIp: ip, clientPort: 40000, http: undefined });
// Deterministic client addresses (xorshift32).
function* ips(count, seed = 1) {
  let x = seed;
  for (let i = 0; i < count; i++) {
    x ^= x << 13; x ^= x >>> 17; x ^= x << 5;
    yield v4(x);
  }
}
const names = (p, ids) => Array.from(ids, (id) => p[id].name);
const pick = (sel, p, ip) => p[sel.select(ctx(ip))[0]].name;

let passed = 0;
async function test(name, f) {
  await f();
  passed++;
  console.log(`ok - ${name}`);
}

await test('settings', async () => {
  let s = await instance();
  assert.deepEqual(s.init([]), { tag: 'ok', val: undefined });
  assert.equal(logged.length, 1, 'one log line at init');
  assert.equal(logged[0].level, 'info');
  s = await instance();
  assert.equal(s.init([['seed', '4294967295']]).tag, 'ok');
  s = await instance();
  assert.deepEqual(s.init([['sed', '1']]), { tag: 'err', val: 'unknown setting `sed`' });
  for (const bad of ['', '-1', '4294967296', '1.5', 'x', '0x10', '12345678901']) {
    s = await instance();
    const r = s.init([['seed', bad]]);
    assert.equal(r.tag, 'err', `seed ${JSON.stringify(bad)}`);
    assert.match(r.val, /^setting `seed`/);
  }
});

await test('answer: every eligible backend once, ineligible left out, tiers in order', async () => {
  const s = await instance();
  s.init([]);
  const p = pool([
    { name: 'a' }, { name: 'b', priority: 1 }, { name: 'c', healthy: false },
    { name: 'd', draining: true }, { name: 'e', weight: 0 }, { name: 'f' },
    { name: 'g', priority: 2 }, { name: 'h', priority: 1 },
  ]);
  s.setPool(p, ['smtp']);
  for (const ip of ips(1000)) {
    const got = names(p, s.select(ctx(ip)));
    assert.equal(got.length, 5);
    assert.deepEqual(got.slice(0, 2).sort(), ['a', 'f']);
    assert.deepEqual(got.slice(2, 4).sort(), ['b', 'h']);
    assert.equal(got[4], 'g');
  }
  s.setPool(pool([{ name: 'x', healthy: false }]), []);
  assert.equal(s.select(ctx(v4(1))).length, 0);
  s.setPool([], []);
  assert.equal(s.select(ctx(v4(1))).length, 0);
});

await test('sticky: same IP, same order; pool reorders change nothing', async () => {
  const s = await instance();
  s.init([]);
  const specs = ['mta-a', 'mta-b', 'mta-c', 'mta-d', 'mta-e'].map((name) => ({ name }));
  const p1 = pool(specs);
  const p2 = pool([...specs].reverse());
  const clients = [...ips(2000)];
  s.setPool(p1, []);
  const before = clients.map((ip) => names(p1, s.select(ctx(ip))).join());
  assert.deepEqual(clients.map((ip) => names(p1, s.select(ctx(ip))).join()), before);
  s.setPool(p2, []);
  assert.deepEqual(clients.map((ip) => names(p2, s.select(ctx(ip))).join()), before);
});

await test('seed changes the mapping', async () => {
  const p = pool([{ name: 'a' }, { name: 'b' }, { name: 'c' }]);
  const a = await instance();
  a.init([]);
  a.setPool(p, []);
  const b = await instance();
  b.init([['seed', '12345']]);
  b.setPool(p, []);
  let same = 0;
  for (const ip of ips(3000)) same += pick(a, p, ip) === pick(b, p, ip);
  assert.ok(same > 800 && same < 1200, `about a third agree, got ${same}/3000`);
});

function shares(s, p, count) {
  const c = Object.fromEntries(p.map((b) => [b.name, 0]));
  for (const ip of ips(count, 7)) c[pick(s, p, ip)]++;
  return c;
}

await test('shares follow weights', async () => {
  const s = await instance();
  s.init([]);
  const N = 60000;
  for (const weights of [[1, 1, 1], [3, 1, 1], [10, 5, 3, 2], [1, 100]]) {
    const p = pool(weights.map((weight, i) => ({ name: `mta-${i}`, weight })));
    s.setPool(p, []);
    const total = weights.reduce((x, y) => x + y);
    const got = shares(s, p, N);
    weights.forEach((w, i) => {
      const want = (N * w) / total;
      const sd = Math.sqrt(want * (1 - w / total));
      assert.ok(Math.abs(got[`mta-${i}`] - want) < 5 * sd + 1,
        `weights ${weights}: mta-${i} got ${got[`mta-${i}`]}, want ~${want.toFixed(0)}`);
    });
  }
});

await test('IPv6: spread, and IPv4-mapped addresses hash as IPv4', async () => {
  const s = await instance();
  s.init([]);
  const p = pool([{ name: 'a' }, { name: 'b' }, { name: 'c' }]);
  s.setPool(p, []);
  const c = { a: 0, b: 0, c: 0 };
  let i = 0;
  for (const ip of ips(30000, 99)) {
    const hi = (0x20010db8n << 32n) | BigInt(i++);
    const lo = (BigInt(ip.val) << 32n) | BigInt(ip.val ^ 0x5bd1e995);
    c[pick(s, p, { tag: 'v6', val: [hi, BigInt.asUintN(64, lo)] })]++;
  }
  for (const k of 'abc') assert.ok(c[k] > 9000 && c[k] < 11000, JSON.stringify(c));
  for (const ip of ips(1000, 5)) {
    const mapped = { tag: 'v6', val: [0n, (0xffffn << 32n) | BigInt(ip.val)] };
    assert.deepEqual([...s.select(ctx(mapped))], [...s.select(ctx(ip))]);
  }
});

await test('a backend that leaves moves only its own clients; one that joins takes only its share', async () => {
  const s = await instance();
  s.init([]);
  const all = [{ name: 'mta-a', weight: 2 }, { name: 'mta-b' }, { name: 'mta-c' }, { name: 'mta-d' }];
  const clients = [...ips(20000, 3)];
  const full = pool(all);
  s.setPool(full, []);
  const before = clients.map((ip) => names(full, s.select(ctx(ip))));
  for (const gone of ['mta-a', 'mta-c']) {
    for (const how of ['removed', 'unhealthy', 'draining']) {
      const p = how === 'removed'
        ? pool(all.filter((b) => b.name !== gone))
        : pool(all.map((b) => (b.name === gone ? { ...b, [how === 'unhealthy' ? 'healthy' : 'draining']: how !== 'unhealthy' } : b)));
      s.setPool(p, []);
      let moved = 0;
      clients.forEach((ip, i) => {
        const now = names(p, s.select(ctx(ip)));
        const was = before[i].filter((n) => n !== gone);
        // The whole order is the old one without the backend that left.
        assert.deepEqual(now, was, `${gone} ${how}`);
        moved += before[i][0] === gone;
      });
      const share = (all.find((b) => b.name === gone).weight ?? 1) / 5;
      assert.ok(Math.abs(moved / clients.length - share) < 0.02, `${gone}: moved ${moved}`);
    }
  }
  // Joining: clients either stay or go to the newcomer.
  const grown = pool([...all, { name: 'mta-e' }]);
  s.setPool(grown, []);
  let toNew = 0;
  clients.forEach((ip, i) => {
    const now = pick(s, grown, ip);
    if (now !== before[i][0]) {
      assert.equal(now, 'mta-e');
      toNew++;
    }
  });
  assert.ok(Math.abs(toNew / clients.length - 1 / 6) < 0.02, `joined: ${toNew}`);
});

await test('select allocates nothing per call beyond the bindings (same buffer back)', async () => {
  const s = await instance();
  s.init([]);
  s.setPool(pool([{ name: 'a' }, { name: 'b' }]), []);
  const r1 = s.select(ctx(v4(1)));
  const r2 = s.select(ctx(v4(2)));
  assert.ok(r1 instanceof Uint32Array);
  assert.equal(r1, r2);
});

rmSync(dir, { recursive: true });
console.log(`${passed} tests passed`);
