#!/usr/bin/env node
'use strict';
/**
 * The C++ addon's two packaging steps (package.json scripts; plain JS: it runs where no
 * devDependency is installed).
 *
 *   node scripts/addon.js install    npm's `install` step: make the addon loadable, nothing else.
 *     - a git checkout (a .git next to package.json), VHOSTFWD_BUILD_FROM_SOURCE=1 or
 *       `npm install --build-from-source`: node-gyp rebuild, as a developer expects after
 *       editing addon/;
 *     - an installed package: the addon that node-gyp-build finds (build/Release from an
 *       earlier source build, else prebuilds/<platform>-<arch>/node.napi.glibc.node shipped in
 *       the tarball) if it loads here; otherwise a source build, which needs g++, make and
 *       python3. Without them: one line saying what to install, exit 1.
 *
 *   node scripts/addon.js prebuild   npm's `prepack` step: put this machine's addon into
 *     prebuilds/<platform>-<arch>/ for the tarball (build/Release reused when it is newer
 *     than the sources, else node-gyp rebuild), and remove dist/ outputs whose source is gone
 *     so that the tarball carries no stale module.
 */
const fs = require('node:fs');
const path = require('node:path');
const cp = require('node:child_process');

const root = path.join(__dirname, '..');
const tuple = `${process.platform}-${process.arch}`;
const RELEASE = path.join(root, 'build', 'Release', 'vhostfwd.node');
/** node-gyp-build's naming: runtime node, N-API (any Node ABI), glibc (not musl). */
const PREBUILD_NAME = 'node.napi.glibc.node';

function say(line) {
  process.stderr.write(`vhostfwd: ${line}\n`);
}

function have(cmd) {
  return cp.spawnSync('sh', ['-c', 'command -v "$1"', 'sh', cmd], { stdio: 'ignore' }).status === 0;
}

/** The tools a source build needs that are missing here (node-gyp: make, a C++ compiler, python). */
function missingToolchain() {
  const missing = [];
  const cxx = (process.env.CXX || 'g++').trim().split(/\s+/)[0];
  if (!have(cxx)) missing.push(process.env.CXX ? `${cxx} (CXX)` : 'g++');
  if (!have('make')) missing.push('make');
  const py = process.env.npm_config_python || process.env.PYTHON;
  if (!(py ? have(py) : have('python3') || have('python'))) missing.push('python3');
  return missing;
}

/** node-gyp: the one npm runs scripts with, else a local one, else one on PATH. */
function nodeGyp() {
  const fromNpm = process.env.npm_config_node_gyp;
  if (fromNpm && fs.existsSync(fromNpm)) return [process.execPath, fromNpm];
  try {
    return [process.execPath, require.resolve('node-gyp/bin/node-gyp.js', { paths: [root] })];
  } catch {
    return have('node-gyp') ? ['node-gyp'] : null;
  }
}

function buildFromSource(why) {
  const missing = missingToolchain();
  if (missing.length > 0) {
    say(`${why} and it cannot be built here: install ${missing.join(', ')} (Debian/Ubuntu: apt-get install g++ make python3), then run npm rebuild vhostfwd`);
    process.exit(1);
  }
  const gyp = nodeGyp();
  if (!gyp) {
    say(`${why} and node-gyp was not found: run this through npm (npm rebuild vhostfwd)`);
    process.exit(1);
  }
  const r = cp.spawnSync(gyp[0], [...gyp.slice(1), 'rebuild'], { cwd: root, stdio: 'inherit' });
  if (r.status !== 0) {
    say(`building the addon from source failed (node-gyp rebuild exit ${r.status ?? r.signal}); the compiler's output is above`);
    process.exit(1);
  }
}

/** The addon node-gyp-build would load, or why there is none that loads. */
function loadable() {
  let file;
  try {
    file = require('node-gyp-build').path(root);
  } catch {
    return { file: null, why: `no prebuilt addon for ${tuple} (glibc)` };
  }
  try {
    require(file);
    return { file, why: '' };
  } catch (e) {
    return { file: null, why: `the prebuilt addon ${path.relative(root, file)} does not load here (${String(e.message).split('\n')[0]})` };
  }
}

function install() {
  const forced = process.env.VHOSTFWD_BUILD_FROM_SOURCE === '1' || process.env.npm_config_build_from_source === 'true';
  if (fs.existsSync(path.join(root, '.git')) || forced) {
    buildFromSource(forced ? 'a source build was asked for' : 'a git checkout builds its addon');
    return;
  }
  const found = loadable();
  if (found.file) {
    say(`using the addon ${path.relative(root, found.file)} (no compiler needed)`);
    return;
  }
  buildFromSource(found.why);
  const built = loadable();
  if (!built.file) {
    say(`the addon was built but does not load: ${built.why}`);
    process.exit(1);
  }
}

function newerThanSources(file) {
  let t;
  try {
    t = fs.statSync(file).mtimeMs;
  } catch {
    return false;
  }
  const sources = [path.join(root, 'binding.gyp'), ...fs.readdirSync(path.join(root, 'addon')).filter((f) => /\.(cc|h)$/.test(f)).map((f) => path.join(root, 'addon', f))];
  return sources.every((s) => fs.statSync(s).mtimeMs <= t);
}

/** dist/src/**\/*.js(.map) whose src/**\/*.ts is gone: tsc never deletes them. */
function removeStaleDist() {
  const distSrc = path.join(root, 'dist', 'src');
  if (!fs.existsSync(distSrc)) return;
  for (const rel of fs.readdirSync(distSrc, { recursive: true })) {
    const m = /^(.*)\.js(\.map)?$/.exec(String(rel));
    if (!m) continue;
    if (!fs.existsSync(path.join(root, 'src', `${m[1]}.ts`))) fs.rmSync(path.join(distSrc, String(rel)));
  }
}

function prebuild() {
  if (process.platform !== 'linux') {
    say(`prebuilds are made on linux only; packing without one for ${tuple}`);
    return;
  }
  if (!newerThanSources(RELEASE)) buildFromSource('the addon is not built yet (prebuild)');
  const dir = path.join(root, 'prebuilds', tuple);
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(dir, { recursive: true });
  const out = path.join(dir, PREBUILD_NAME);
  fs.copyFileSync(RELEASE, out);
  // Debug symbols are most of the file; the tarball needs only the dynamic symbols.
  if (have('strip')) cp.spawnSync('strip', ['--strip-unneeded', out], { stdio: 'inherit' });
  say(`prebuilt addon ${path.relative(root, out)} (${fs.statSync(out).size} bytes)`);
  removeStaleDist();
}

const mode = process.argv[2];
if (mode === 'install') install();
else if (mode === 'prebuild') prebuild();
else {
  say('usage: node scripts/addon.js install|prebuild');
  process.exit(2);
}
