/**
 * The package as a user gets it (issue 28). A copy of this checkout is packed the way a
 * release is (npm pack: prepack puts this machine's addon into prebuilds/, prepare compiles
 * dist/); the tarball must hold only what runs. It is then installed into an empty project
 * and globally under a temporary prefix with a PATH holding node and sh and nothing else:
 * no g++, make, python3 or tsc, so any compile step would fail. The installed vhostfwd then
 * runs --version, check-config on a shipped example and a 2-second demo. Last, a source
 * build asked for without a toolchain fails with one line naming what to install.
 *
 * Dependencies come from npm's cache (--prefer-offline; `npm ci` filled it), else the registry.
 */
import t from 'tap';
import { spawnSync, type SpawnSyncReturns } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const ROOT = path.join(__dirname, '..', '..');
const PKG = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { name: string; version: string };
const TUPLE = `${process.platform}-${process.arch}`;
/** top-level entries of the checkout that a clean clone does not have (or that npm rebuilds). */
const NOT_COPIED = new Set(['.git', 'node_modules', 'build', 'dist', 'prebuilds', '.tap']);

/** npm's own CLI script: the one running `npm test`, else the one on PATH. */
function npmCli(): string {
  const fromNpm = process.env.npm_execpath;
  if (fromNpm && /npm-cli\.js$/.test(fromNpm) && fs.existsSync(fromNpm)) return fromNpm;
  const r = spawnSync('sh', ['-c', 'command -v npm'], { encoding: 'utf8' });
  const bin = fs.realpathSync(r.stdout.trim());
  return bin.endsWith('.js') ? bin : path.join(path.dirname(bin), 'npm-cli.js');
}

/** this environment without the npm_* variables of the enclosing `npm test`, PATH replaced. */
function cleanEnv(pathVar: string, extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (/^npm_/i.test(k) && k.toLowerCase() !== 'npm_config_cache') continue;
    env[k] = v;
  }
  return { ...env, PATH: pathVar, npm_config_update_notifier: 'false', npm_config_fund: 'false', npm_config_audit: 'false', ...extra };
}

function show(r: SpawnSyncReturns<string>): string {
  return `exit ${r.status ?? r.signal}\n${(r.stdout ?? '').slice(-3000)}\n${(r.stderr ?? '').slice(-3000)}`;
}

t.test('npm pack, then install and run the tarball with no compiler on PATH', { skip: process.platform !== 'linux' ? 'linux only' : false }, async (t) => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'pkgtest-'));
  t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));
  const npm = npmCli();

  // --- a clean copy of the checkout, packed as a release is
  const src = path.join(tmp, 'src');
  fs.cpSync(ROOT, src, {
    recursive: true,
    filter: (from) => {
      const rel = path.relative(ROOT, from);
      const top = rel.split(path.sep)[0];
      return !NOT_COPIED.has(top) && !/\.tgz$/.test(rel);
    },
  });
  fs.symlinkSync(path.join(ROOT, 'node_modules'), path.join(src, 'node_modules'));
  const pack = spawnSync(process.execPath, [npm, 'pack', '--pack-destination', tmp], { cwd: src, encoding: 'utf8', env: cleanEnv(process.env.PATH ?? ''), timeout: 300_000 });
  t.equal(pack.status, 0, `npm pack: ${pack.status === 0 ? 'ok' : show(pack)}`);
  const tgz = path.join(tmp, `${PKG.name}-${PKG.version}.tgz`);
  if (!t.ok(fs.existsSync(tgz), 'tarball written')) return;

  // --- the tarball holds only what runs
  const list = spawnSync('tar', ['-tzf', tgz], { encoding: 'utf8' }).stdout.trim().split('\n');
  const files = list.map((f) => f.replace(/^package\//, ''));
  const allowed = [
    /^dist\/src\/.+\.js$/,
    /^addon\/[a-z0-9_]+\.(cc|h)$/,
    /^binding\.gyp$/,
    /^scripts\/addon\.js$/,
    /^prebuilds\/[a-z0-9]+-[a-z0-9]+\/[^/]+\.node$/,
    /^schema\/[^/]+\.json$/,
    /^examples\/.+$/,
    /^(README\.md|LICENSE|package\.json)$/,
  ];
  t.same(files.filter((f) => !allowed.some((re) => re.test(f))), [], 'nothing outside the whitelist (no tests, bench results, TypeScript sources, source maps)');
  t.notOk(files.some((f) => /^(test|bench|src)\/|^dist\/(test|bench)\/|\.ts$|\.map$/.test(f)), 'no test, bench or .ts files');
  for (const need of ['dist/src/cli.js', 'dist/src/index.js', 'dist/src/workers/poller.js', `prebuilds/${TUPLE}/node.napi.glibc.node`, 'binding.gyp', 'addon/vhostfwd.cc', 'schema/config.schema.json', 'examples/bridge.json', 'README.md', 'LICENSE', 'scripts/addon.js']) {
    t.ok(files.includes(need), `tarball has ${need}`);
  }
  // the addon's whole source, for a build from source where no prebuild fits
  const addonSources = fs.readdirSync(path.join(ROOT, 'addon')).filter((f) => /\.(cc|h)$/.test(f)).map((f) => `addon/${f}`);
  t.same(addonSources.filter((f) => !files.includes(f)), [], `every addon source is in the tarball (${addonSources.length} files)`);
  // the whitelist above decides what may ship; the count catches a glob gone wild (80 files
  // on 2026-12-06: the compiled modules, the addon sources, schemas, examples, the prebuild)
  t.ok(files.length < 120, `${files.length} files in the tarball`);
  t.comment(`tarball: ${files.length} files, ${fs.statSync(tgz).size} bytes`);

  // --- a PATH with node and sh only: no compiler, no make, no python, no tsc
  const bin = path.join(tmp, 'bin');
  fs.mkdirSync(bin);
  fs.symlinkSync(process.execPath, path.join(bin, 'node'));
  fs.symlinkSync(fs.realpathSync('/bin/sh'), path.join(bin, 'sh'));
  const bare = cleanEnv(bin);
  for (const tool of ['g++', 'c++', 'cc', 'make', 'python3', 'tsc', 'node-gyp']) {
    t.not(spawnSync('sh', ['-c', `command -v ${tool}`], { env: bare }).status, 0, `${tool} not on the test PATH`);
  }
  const npmBare = (cwd: string, args: string[], env = bare) =>
    spawnSync(process.execPath, [npm, ...args], { cwd, env, encoding: 'utf8', timeout: 180_000 });
  const vf = (exe: string, args: string[]) => spawnSync(exe, args, { env: bare, encoding: 'utf8', timeout: 60_000 });

  // --- into an empty project
  const proj = path.join(tmp, 'proj');
  fs.mkdirSync(proj);
  fs.writeFileSync(path.join(proj, 'package.json'), JSON.stringify({ name: 'consumer', version: '1.0.0', private: true }));
  const inst = npmBare(proj, ['install', '--prefer-offline', '--foreground-scripts', tgz]);
  t.equal(inst.status, 0, `npm install ./tarball: ${inst.status === 0 ? 'ok' : show(inst)}`);
  t.match(inst.stdout + inst.stderr, /using the addon prebuilds\/\S+ \(no compiler needed\)/, 'install used the prebuilt addon');
  const installed = path.join(proj, 'node_modules', PKG.name);
  t.notOk(fs.existsSync(path.join(installed, 'build')), 'no compile step ran (no build/ in the installed package)');
  const exe = path.join(proj, 'node_modules', '.bin', 'vhostfwd');
  const v = vf(exe, ['--version']);
  t.equal(v.status, 0, 'vhostfwd --version exits 0');
  t.equal(v.stdout.trim(), PKG.version, 'prints the package version');
  const cc = vf(exe, ['check-config', path.join(installed, 'examples', 'bridge.json')]);
  t.equal(cc.status, 0, `check-config examples/bridge.json: ${cc.status === 0 ? 'ok' : show(cc)}`);
  t.doesNotThrow(() => JSON.parse(cc.stdout), 'prints the config (schema found in the package)');
  const demo = vf(exe, ['demo', '--seconds', '2']);
  t.equal(demo.status, 0, `vhostfwd demo --seconds 2: ${demo.status === 0 ? 'ok' : show(demo)}`);
  t.match(demo.stdout + demo.stderr, /demo OK/, 'the demo forwarded and migrated through the installed addon');

  // --- globally, under a temporary prefix
  const prefix = path.join(tmp, 'global');
  const g = npmBare(tmp, ['install', '-g', '--prefix', prefix, '--prefer-offline', tgz]);
  t.equal(g.status, 0, `npm install -g ./tarball: ${g.status === 0 ? 'ok' : show(g)}`);
  const gexe = path.join(prefix, 'bin', 'vhostfwd');
  const gv = vf(gexe, ['--version']);
  t.equal(gv.stdout.trim(), PKG.version, 'global vhostfwd --version');
  // the CNI plugin is a bin of its own: a runtime executes it with CNI_* variables
  const cni = spawnSync(path.join(prefix, 'bin', 'vhostfwd-cni'), [], { env: { ...bare, CNI_COMMAND: 'VERSION' }, input: '{"cniVersion": "1.0.0"}', encoding: 'utf8', timeout: 60_000 });
  t.equal(cni.status, 0, `global vhostfwd-cni VERSION: ${cni.status === 0 ? 'ok' : show(cni)}`);
  t.match(cni.stdout, /"supportedVersions"/, 'vhostfwd-cni answers VERSION with its supported versions');
  const gcc = vf(gexe, ['check-config', path.join(prefix, 'lib', 'node_modules', PKG.name, 'examples', 'xconnect.json')]);
  t.equal(gcc.status, 0, `global check-config examples/xconnect.json: ${gcc.status === 0 ? 'ok' : show(gcc)}`);

  // --- no prebuild usable and no toolchain: one line saying what to install
  const proj2 = path.join(tmp, 'proj2');
  fs.mkdirSync(proj2);
  fs.writeFileSync(path.join(proj2, 'package.json'), JSON.stringify({ name: 'consumer2', version: '1.0.0', private: true }));
  const nb = npmBare(proj2, ['install', '--prefer-offline', tgz], cleanEnv(bin, { VHOSTFWD_BUILD_FROM_SOURCE: '1' }));
  t.not(nb.status, 0, 'a source build without a toolchain fails the install');
  t.match(nb.stderr, /vhostfwd: .*cannot be built here: install g\+\+, make, python3 \(Debian\/Ubuntu: apt-get install g\+\+ make python3\)/, 'with one line naming what to install');
});
