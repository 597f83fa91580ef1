#!/usr/bin/env node
// A reference herd server in Node.js (`net`, no npm packages), the idiomatic way for its
// stack: one event loop, callbacks on Buffers. It keeps herd's wire contract for IAMAT, `?`
// and flooding so that bench/compare-stacks.sh can compare herd against it; WHATSAT answers
// from a fixed small place list. Peer links are persistent TCP connections carrying text
// UPDATE lines (see bench/reference/README.md).
//
// Usage: node herd.js serve NAME --config HERD.toml
'use strict';
const net = require('net');
const fs = require('fs');

const MAX_LINE = 64 * 1024;
const LF = 0x0a, CR = 0x0d;
// Exactly SP HT CR LF FF VT.
const isWs = (b) => b === 0x20 || b === 0x09 || b === 0x0d || b === 0x0a || b === 0x0c || b === 0x0b;
const LOCATION = /^([+-])(\d+)(?:\.(\d+))?([+-])(\d+)(?:\.(\d+))?$/;
const TIME = /^(\d+)(?:\.(\d+))?$/;
const RADIUS = /^\d+(?:\.\d+)?$/;
const BOUND = /^\d+$/;
const PLACES = [
  { name: 'Royce Hall', lat: 34.0729, lng: -118.4422 },
  { name: 'Boelter Hall', lat: 34.0692, lng: -118.4431 },
  { name: 'Powell Library', lat: 34.0716, lng: -118.4421 },
];

// Node has no TOML parser in its standard library and the references take no packages: this
// reads only the herd file's subset ([[server]] tables of strings, integers and string
// arrays on one line; other tables and comments are skipped).
function parseHerdFile(text) {
  const servers = [];
  let cur = null;
  for (let raw of text.split('\n')) {
    const line = raw.replace(/#.*$/, '').trim();
    if (!line) continue;
    if (line === '[[server]]') { cur = {}; servers.push(cur); continue; }
    if (line.startsWith('[')) { cur = null; continue; }
    const m = /^([A-Za-z_]+)\s*=\s*(.*)$/.exec(line);
    if (!m || !cur) continue;
    cur[m[1]] = JSON.parse(m[2]);
  }
  return servers;
}

function fields(buf) {
  const out = [];
  let i = 0;
  while (i < buf.length) {
    while (i < buf.length && isWs(buf[i])) i++;
    const s = i;
    while (i < buf.length && !isWs(buf[i])) i++;
    if (i > s) out.push(buf.subarray(s, i));
  }
  return out;
}

// Field text for the regexes: latin1 maps every byte to one char, so no byte is lost.
const txt = (b) => b.toString('latin1');

function within(whole, frac, bound) {
  const w = BigInt(whole);
  return w < bound || (w === bound && (frac === undefined || /^0*$/.test(frac)));
}

function validLocation(b) {
  const m = LOCATION.exec(txt(b));
  return m !== null && within(m[2], m[3], 90n) && within(m[5], m[6], 180n);
}

function timeNs(b) {
  const m = TIME.exec(txt(b));
  if (!m) return null;
  return BigInt(m[1]) * 1000000000n + BigInt(((m[2] || '') + '000000000').slice(0, 9));
}

function timeDiff(ns) {
  const sign = ns >= 0n ? '+' : '-';
  if (ns < 0n) ns = -ns;
  return sign + (ns / 1000000000n).toString() + '.' + (ns % 1000000000n).toString().padStart(9, '0');
}

function nowNs() {
  // Date.now() is milliseconds only; performance.timeOrigin + now() gives sub-ms wall time.
  const { performance } = require('perf_hooks');
  const ms = performance.timeOrigin + performance.now();
  return BigInt(Math.floor(ms)) * 1000000n + BigInt(Math.floor((ms % 1) * 1e6));
}

// The flood rule's total order: client time, origin, then the remaining bytes.
function newer(a, b) {
  if (a.ns !== b.ns) return a.ns > b.ns;
  for (const k of ['origin', 'diff', 'location']) {
    const c = Buffer.compare(a[k], b[k]);
    if (c !== 0) return c > 0;
  }
  return false;
}

function makeRecord(client, location, time, ns, origin, diff) {
  const sp = Buffer.from(' ');
  const at = Buffer.concat([Buffer.from('AT '), origin, sp, diff, sp, client, sp, location, sp, time, Buffer.from('\n')]);
  return { key: client.toString('latin1'), client, location, time, ns, origin, diff, at };
}

function updateLine(rec, seen) {
  const sp = Buffer.from(' ');
  return Buffer.concat([Buffer.from('UPDATE '), rec.client, sp, rec.location, sp, rec.time, sp,
    rec.origin, sp, rec.diff, sp, Buffer.from(seen.join(' ')), Buffer.from('\n')]);
}

class Server {
  constructor(name, herd) {
    this.name = name;
    this.nameBuf = Buffer.from(name);
    this.herd = herd;
    this.me = herd.get(name);
    this.records = new Map();
    this.links = new Map(this.me.neighbours.map((n) => [n, null]));
  }

  // Splits a socket's bytes into lines; `onLine` answers each, past MAX_LINE the bytes
  // are streamed back after `? `.
  client(sock) {
    let buf = Buffer.alloc(0);
    let longLine = false;
    sock.on('data', (chunk) => {
      buf = buf.length ? Buffer.concat([buf, chunk]) : chunk;
      const out = [];
      let i;
      while ((i = buf.indexOf(LF)) >= 0) {
        let line = buf.subarray(0, i);
        buf = buf.subarray(i + 1);
        if (line.length && line[line.length - 1] === CR) line = line.subarray(0, line.length - 1);
        if (longLine) { out.push(line, Buffer.from('\n')); longLine = false; } else this.command(line, out);
      }
      if (!longLine && buf.length > MAX_LINE) { out.push(Buffer.from('? '), buf); buf = Buffer.alloc(0); longLine = true; }
      else if (longLine && buf.length) { out.push(buf); buf = Buffer.alloc(0); }
      if (out.length) sock.write(Buffer.concat(out));
    });
    sock.on('end', () => {
      const out = [];
      if (longLine) out.push(buf, Buffer.from('\n'));
      else if (buf.length) {
        let line = buf;
        if (line[line.length - 1] === CR) line = line.subarray(0, line.length - 1);
        this.command(line, out);
      }
      sock.end(out.length ? Buffer.concat(out) : undefined);
    });
    sock.on('error', () => sock.destroy());
  }

  command(line, out) {
    const f = fields(line);
    if (f.length === 0) return;
    let reply = null;
    const cmd = txt(f[0] || Buffer.alloc(0));
    if (f.length === 4 && cmd === 'IAMAT') reply = this.iamat(f[1], f[2], f[3]);
    else if (f.length === 4 && cmd === 'WHATSAT') reply = this.whatsat(f[1], f[2], f[3]);
    if (reply === null) out.push(Buffer.from('? '), line, Buffer.from('\n'));
    else out.push(reply);
  }

  iamat(client, location, time) {
    const now = nowNs();
    const ns = timeNs(time);
    if (ns === null || !validLocation(location)) return null;
    const old = this.records.get(client.toString('latin1'));
    if (old && old.ns >= ns) return old.at;
    const rec = makeRecord(Buffer.from(client), Buffer.from(location), Buffer.from(time), ns,
      this.nameBuf, Buffer.from(timeDiff(now - ns)));
    this.records.set(rec.key, rec);
    this.flood(rec, [this.name]);
    return rec.at;
  }

  whatsat(client, radius, bound) {
    const rec = this.records.get(client.toString('latin1'));
    if (!rec || !RADIUS.test(txt(radius)) || !BOUND.test(txt(bound))) return null;
    const r = parseFloat(txt(radius)), n = parseInt(txt(bound), 10);
    if (!(r > 0 && r <= 50 && n <= 20)) return null;
    const results = PLACES.slice(0, n).map((p) => ({ name: p.name, geometry: { location: { lat: p.lat, lng: p.lng } } }));
    const body = { html_attributions: [], results, status: results.length || n === 0 ? 'OK' : 'ZERO_RESULTS' };
    return Buffer.concat([rec.at, Buffer.from(JSON.stringify(body, null, 3)), Buffer.from('\n\n')]);
  }

  flood(rec, seen) {
    const targets = [...this.links.keys()].filter((n) => !seen.includes(n));
    const line = updateLine(rec, seen.concat(targets));
    for (const n of targets) {
      const sock = this.links.get(n);
      if (sock) sock.write(line);
    }
  }

  // An inbound link: UPDATE lines from a neighbour, applied and forwarded.
  peerIn(sock) {
    let buf = Buffer.alloc(0);
    sock.on('data', (chunk) => {
      buf = buf.length ? Buffer.concat([buf, chunk]) : chunk;
      let i;
      while ((i = buf.indexOf(LF)) >= 0) {
        const line = buf.subarray(0, i);
        buf = buf.subarray(i + 1);
        const f = fields(line);
        const ns = f.length >= 7 && txt(f[0]) === 'UPDATE' ? timeNs(f[3]) : null;
        if (ns === null || !validLocation(f[2])) {
          console.error(`${this.name}: bad peer line ${JSON.stringify(txt(line).slice(0, 80))}; cutting the link`);
          sock.destroy();
          return;
        }
        const rec = makeRecord(Buffer.from(f[1]), Buffer.from(f[2]), Buffer.from(f[3]), ns,
          Buffer.from(f[4]), Buffer.from(f[5]));
        const old = this.records.get(rec.key);
        if (old && !newer(rec, old)) continue;
        this.records.set(rec.key, rec);
        this.flood(rec, f.slice(6).map((b) => txt(b)));
      }
      if (buf.length > 4 * MAX_LINE) sock.destroy();
    });
    sock.on('error', () => sock.destroy());
  }

  // Our outbound link to a neighbour: reconnects with backoff; on each connect it sends every
  // record held, so that a neighbour that was down catches up.
  peerOut(name, backoff = 50) {
    const peer = this.herd.get(name);
    const sock = net.connect({ host: peer.host, port: peer.peer_port });
    sock.setNoDelay(true);
    let up = false;
    sock.on('connect', () => {
      up = true;
      this.links.set(name, sock);
      const dump = [...this.records.values()].map((r) => updateLine(r, [this.name]));
      if (dump.length) sock.write(Buffer.concat(dump));
    });
    sock.on('data', () => {});
    sock.on('error', () => {});
    sock.on('close', () => {
      this.links.set(name, null);
      const next = up ? 50 : Math.min(backoff * 2, 2000);
      setTimeout(() => this.peerOut(name, next), up ? 0 : backoff);
    });
  }

  run() {
    const host = this.me.listen || this.me.host;
    net.createServer({ noDelay: true, allowHalfOpen: true }, (s) => this.client(s)).listen(this.me.client_port, host);
    net.createServer({ noDelay: true }, (s) => this.peerIn(s)).listen(this.me.peer_port, host);
    for (const n of this.links.keys()) this.peerOut(n);
  }
}

function main() {
  const args = process.argv.slice(2);
  const ci = args.indexOf('--config');
  if (args[0] !== 'serve' || !args[1] || ci < 0 || !args[ci + 1]) {
    console.error('usage: node herd.js serve NAME --config HERD.toml');
    process.exit(2);
  }
  const herd = new Map(parseHerdFile(fs.readFileSync(args[ci + 1], 'utf8')).map((s) => [s.name, s]));
  if (!herd.has(args[1])) {
    console.error(`herd.js: no server ${JSON.stringify(args[1])} in ${args[ci + 1]}`);
    process.exit(2);
  }
  new Server(args[1], herd).run();
}

main();
