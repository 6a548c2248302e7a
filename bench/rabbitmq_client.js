// The RabbitMQ side of bench/compare_rabbitmq.py, with Node's amqplib (0.10).
//
//   node rabbitmq_client.js setup   CONFIG.json   declare the topology (fresh: queues deleted first)
//   node rabbitmq_client.js publish CONFIG.json   publish with confirms, pipelined (a window)
//   node rabbitmq_client.js consume CONFIG.json   consume with manual acks and a prefetch
//
// CONFIG (JSON): url, exchange, queues [name], bindings [[queue, routing key]], envelopes (file:
// one "routing key TAB envelope JSON" per line), connections, window, duration_s, count,
// prefetch, ack_every, max_s, wait_stop (consume: run until a line on stdin, then until drained).
// Every run is bounded by count and time; the result is one JSON line on stdout. Only the URL
// given (127.0.0.1) is contacted.
'use strict';

const fs = require('fs');
const path = require('path');
const readline = require('readline');
const amqp = require(path.join(process.env.AMQPLIB_HOME || path.join(__dirname, '.cache'),
  'node_modules', 'amqplib'));

const GRACE_MS = 30000; // after the load: how long outstanding confirms may take
const now = () => performance.now();

function loadEnvelopes(file) {
  const buf = fs.readFileSync(file);
  const out = [];
  let start = 0;
  while (start < buf.length) {
    let end = buf.indexOf(10, start);
    if (end < 0) end = buf.length;
    const tab = buf.indexOf(9, start);
    out.push([buf.toString('latin1', start, tab), buf.subarray(tab + 1, end)]);
    start = end + 1;
  }
  return out;
}

async function setup(cfg) {
  const conn = await amqp.connect(cfg.url);
  const ch = await conn.createChannel();
  for (const q of cfg.queues) await ch.deleteQueue(q);
  await ch.deleteExchange(cfg.exchange);
  await ch.assertExchange(cfg.exchange, 'topic', {durable: true, autoDelete: false});
  for (const q of cfg.queues) {
    await ch.assertQueue(q, {durable: true, autoDelete: false,
      arguments: {'x-queue-type': 'classic'}});
  }
  for (const [q, key] of cfg.bindings) await ch.bindQueue(q, cfg.exchange, key);
  await ch.close();
  await conn.close();
  return {queues: cfg.queues.length, bindings: cfg.bindings.length};
}

async function publish(cfg) {
  const envs = loadEnvelopes(cfg.envelopes);
  const fanout = new Map();
  for (const [, key] of cfg.bindings) fanout.set(key, (fanout.get(key) || 0) + 1);
  const st = {next: 0, confirmed: 0, nacked: 0, routed: 0, bytes: 0, lastConfirm: 0};
  const conns = [];
  for (let i = 0; i < cfg.connections; i++) conns.push(await amqp.connect(cfg.url));
  const chans = [];
  for (const c of conns) chans.push(await c.createConfirmChannel());
  const t0 = now();
  const deadline = t0 + cfg.duration_s * 1000;
  const stopped = () => st.next >= cfg.count || now() >= deadline;

  const one = (ch) => new Promise((resolve, reject) => {
    let outstanding = 0;
    let blocked = false;
    ch.on('error', reject);
    const done = () => { if (outstanding === 0 && stopped()) resolve(); };
    const pump = () => {
      while (!blocked && outstanding < cfg.window && !stopped()) {
        const [key, body] = envs[st.next % envs.length];
        st.next++;
        st.routed += fanout.get(key) || 0;
        st.bytes += body.length;
        outstanding++;
        const ok = ch.publish(cfg.exchange, key, body,
          {persistent: true, contentType: 'application/json'}, (err) => {
            outstanding--;
            if (err) st.nacked++; else { st.confirmed++; st.lastConfirm = now(); }
            pump();
            done();
          });
        if (!ok) { blocked = true; ch.once('drain', () => { blocked = false; pump(); }); }
      }
      done();
    };
    pump();
  });
  let timer;
  const hard = new Promise((resolve) => {
    timer = setTimeout(resolve, cfg.duration_s * 1000 + GRACE_MS);
  });
  await Promise.race([Promise.all(chans.map(one)), hard]);
  clearTimeout(timer);
  const elapsed = (st.lastConfirm - t0) / 1000;
  for (const c of conns) await c.close().catch(() => {});
  return {
    published: st.next, confirmed: st.confirmed, nacked: st.nacked,
    unconfirmed: st.next - st.confirmed - st.nacked, routed: st.routed,
    mean_envelope_bytes: st.next ? Math.round(st.bytes / st.next) : 0,
    elapsed_s: +elapsed.toFixed(3),
    per_s: elapsed > 0 ? +(st.confirmed / elapsed).toFixed(1) : null,
  };
}

async function consume(cfg) {
  const conns = [];
  for (let i = 0; i < cfg.connections; i++) conns.push(await amqp.connect(cfg.url));
  const st = {delivered: 0, acked: 0, first: 0, last: 0, lastAt: now()};
  const chans = [];
  for (let i = 0; i < cfg.queues.length; i++) {
    const ch = await conns[i % conns.length].createChannel();
    await ch.prefetch(cfg.prefetch);
    chans.push({ch, q: cfg.queues[i], pending: null, n: 0});
  }
  let expect = 0;
  for (const c of chans) expect += (await c.ch.checkQueue(c.q)).messageCount;
  const t0 = now();
  const flush = (c) => { if (c.pending) { c.ch.ack(c.pending, true); st.acked += c.n; c.pending = null; c.n = 0; } };
  for (const c of chans) {
    await c.ch.consume(c.q, (msg) => {
      if (msg === null) return;
      st.delivered++;
      st.last = now();
      c.pending = msg;
      if (++c.n >= cfg.ack_every) flush(c);
    }, {noAck: false});
  }
  const flusher = setInterval(() => chans.forEach(flush), 20);
  let stopAsked = !cfg.wait_stop;
  if (cfg.wait_stop) {
    process.stdout.write('ready\n');
    readline.createInterface({input: process.stdin}).once('line', () => { stopAsked = true; });
  }
  const deadline = t0 + cfg.max_s * 1000;
  // done: asked to stop (or not waiting for it), nothing ready in any queue, all acked and no
  // delivery for a moment; or the expected count reached; or the deadline
  for (;;) {
    await new Promise((r) => setTimeout(r, 100));
    if (now() >= deadline) break;
    if (!cfg.wait_stop && st.delivered >= expect) break;
    if (!stopAsked || now() - st.last < 300) continue;
    chans.forEach(flush);
    let ready = 0;
    for (const c of chans) ready += (await c.ch.checkQueue(c.q)).messageCount;
    if (ready === 0 && st.acked === st.delivered) break;
  }
  clearInterval(flusher);
  chans.forEach(flush);
  const elapsed = (st.last - t0) / 1000;
  for (const c of conns) await c.close().catch(() => {});
  return {
    delivered: st.delivered, acked: st.acked, expected_at_start: expect,
    elapsed_s: +elapsed.toFixed(3),
    per_s: elapsed > 0 ? +(st.delivered / elapsed).toFixed(1) : null,
  };
}

async function main() {
  const [mode, file] = process.argv.slice(2);
  const cfg = JSON.parse(fs.readFileSync(file, 'utf8'));
  const run = {setup, publish, consume}[mode];
  if (!run) throw new Error(`unknown mode ${mode}`);
  const result = await run(cfg);
  process.stdout.write(JSON.stringify({mode, ...result}) + '\n');
  process.exit(0);
}

main().catch((err) => {
  process.stderr.write(`rabbitmq_client: ${err && err.stack || err}\n`);
  process.exit(1);
});
