#!/usr/bin/env node
// SPDX-License-Identifier: Apache-2.0
//
// ONNX Runtime side of the BERT encoder benchmark (see docs/encoder-benchmark.md).
//
// Loads <models-dir>/<model>/<onnx> (written by make_models.py; --onnx
// model.onnx is the opset 14 export, model-opset12.onnx the opset 12 one) into
// onnxruntime-node's CPU execution provider with graph optimisation level
// "all", and times session.run() on the token ids of
// <models-dir>/inputs/ids_<b>x<s>.npy (attention mask all ones, token types
// all zeros; building the input tensors is outside the timed region, and no
// tokenization is timed for any runtime). One JSON line per (threads, shape)
// is appended to --out, and one line with the process's peak RSS at the end.
// With --ref-dir and --write-ref 1, the last_hidden_state of each shape (from
// the first thread count) is written there as a 2-D float32 .npy of
// (b*s) x hidden, the reference that the other runtimes' outputs are compared
// with; with --ref-dir alone, the output is compared with that file (largest
// absolute difference).
//
//   node benchmarks/bert/bench_ort.js --models-dir build-bench/bert-models \
//        --model minilm-l6 --out results.jsonl [--onnx model.onnx]
//        [--ref-dir DIR [--write-ref 1]] [--threads 1,2]
//        [--shapes 1x16,1x128,32x128] [--warmup 2] [--min-runs 5]
//        [--min-seconds 2] [--max-runs 100] [--serve 0|1]
//
// --serve 1 hands the timing to a driver (benchmarks/bert/interleave.py), as
// bench_bert_encoder's --serve does: after each row's accuracy call and
// warm-up it prints "ready <b>x<s> t=<threads>", then answers each
// "burst <min_ms> <max_calls> <untimed>" on stdin with "done <ms>,<ms>,..."
// (<untimed> calls, then timed calls until min_ms have passed or max_calls
// are done, at least one) until "end" closes
// the row, whose JSON line comes from every call of its bursts.

'use strict';

const fs = require('fs');
const path = require('path');
const readline = require('readline');
const ort = require('onnxruntime-node');

function parseArgs(argv) {
  const args = {
    modelsDir: null, model: null, onnx: 'model.onnx', out: null, refDir: null, writeRef: '0',
    threads: '1,2',
    shapes: '1x16,1x128,32x128', warmup: 2, minRuns: 5, minSeconds: 2, maxRuns: 100, serve: '0',
  };
  const names = {
    '--models-dir': 'modelsDir', '--model': 'model', '--onnx': 'onnx', '--out': 'out', '--ref-dir': 'refDir', '--write-ref': 'writeRef',
    '--threads': 'threads', '--shapes': 'shapes', '--warmup': 'warmup', '--min-runs': 'minRuns',
    '--min-seconds': 'minSeconds', '--max-runs': 'maxRuns', '--serve': 'serve',
  };
  for (let i = 2; i < argv.length; i += 2) {
    const key = names[argv[i]];
    if (key === undefined || i + 1 >= argv.length) {
      throw new Error(`bench_ort.js: unknown option or missing value: ${argv[i]}`);
    }
    args[key] = argv[i + 1];
  }
  for (const k of ['modelsDir', 'model', 'out']) {
    if (!args[k]) throw new Error(`bench_ort.js: --${k.replace(/[A-Z]/g, (c) => '-' + c.toLowerCase())} is required`);
  }
  for (const k of ['warmup', 'minRuns', 'minSeconds', 'maxRuns']) args[k] = Number(args[k]);
  args.threads = args.threads.split(',').map(Number);
  args.shapes = args.shapes.split(',').map((s) => s.split('x').map(Number));
  return args;
}

// Minimal .npy reader for a C-order little-endian array of 2 dimensions.
function readNpy(file, descr) {
  const buf = fs.readFileSync(file);
  if (buf.toString('latin1', 0, 6) !== '\x93NUMPY') throw new Error(`${file}: not a .npy file`);
  const major = buf[6];
  const headerLen = major === 1 ? buf.readUInt16LE(8) : buf.readUInt32LE(8);
  const start = (major === 1 ? 10 : 12) + headerLen;
  const header = buf.toString('latin1', major === 1 ? 10 : 12, start);
  if (!header.includes(`'descr': '${descr}'`) || /'fortran_order':\s*True/.test(header)) {
    throw new Error(`${file}: expected a C-order '${descr}' array, header ${header.trim()}`);
  }
  const shape = header.match(/'shape':\s*\((\d+),\s*(\d+)\)/);
  if (!shape) throw new Error(`${file}: expected a 2-D array, header ${header.trim()}`);
  const rows = Number(shape[1]);
  const cols = Number(shape[2]);
  const size = descr === '<i8' ? 8 : 4;
  const body = buf.subarray(start, start + rows * cols * size);
  if (body.length !== rows * cols * size) throw new Error(`${file}: truncated data`);
  const data = descr === '<i8' ? new BigInt64Array(rows * cols) : new Float32Array(rows * cols);
  for (let i = 0; i < rows * cols; ++i) {
    data[i] = descr === '<i8' ? body.readBigInt64LE(i * 8) : body.readFloatLE(i * 4);
  }
  return { rows, cols, data };
}

// Writes a 2-D little-endian float32 .npy (version 1.0).
function writeNpyFloat32(file, rows, cols, data) {
  let header = `{'descr': '<f4', 'fortran_order': False, 'shape': (${rows}, ${cols}), }`;
  const total = 10 + header.length + 1;
  header += ' '.repeat((64 - (total % 64)) % 64) + '\n';
  const head = Buffer.alloc(10);
  head.write('\x93NUMPY', 0, 'latin1');
  head[6] = 1;
  head[7] = 0;
  head.writeUInt16LE(header.length, 8);
  const body = Buffer.from(data.buffer, data.byteOffset, rows * cols * 4);
  const tmp = `${file}.tmp`;
  fs.writeFileSync(tmp, Buffer.concat([head, Buffer.from(header, 'latin1'), body]));
  fs.renameSync(tmp, file);
}

function procStatusKiB(field) {
  const m = fs.readFileSync('/proc/self/status', 'utf8').match(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm'));
  return m ? Number(m[1]) : NaN;
}

function percentile(sorted, p) {
  // Nearest rank: the smallest value with at least p of the runs at or below it.
  return sorted[Math.max(0, Math.ceil(p * sorted.length) - 1)];
}

// Lines of stdin, one at a time (driven mode).
let stdinLines = null;
async function nextCommand() {
  if (stdinLines === null) {
    stdinLines = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();
  }
  const { value, done } = await stdinLines.next();
  if (done) throw new Error('bench_ort.js --serve: stdin closed before "end"');
  return value;
}

// Times session.run(feeds) calls, appending each call's ms to times, until
// done(calls timed here, ms since the first of them) is true (at least one).
async function timeUntil(session, feeds, done, times) {
  const begin = process.hrtime.bigint();
  for (let n = 1; ; ++n) {
    const t0 = process.hrtime.bigint();
    await session.run(feeds);
    const t1 = process.hrtime.bigint();
    times.push(Number(t1 - t0) / 1e6);
    if (done(n, Number(t1 - begin) / 1e6)) return;
  }
}

// Driven mode (--serve 1): bursts of calls on the driver's command, until "end".
async function serveCalls(session, feeds, label) {
  process.stdout.write(`ready ${label}\n`);
  const times = [];
  for (;;) {
    const line = await nextCommand();
    if (line === 'end') {
      if (times.length === 0) throw new Error('bench_ort.js --serve: "end" before any burst');
      return times;
    }
    const m = line.match(/^burst (\S+) (\d+) (\d+)$/);
    if (!m) throw new Error(`bench_ort.js --serve: unknown command '${line}'`);
    const minMs = Number(m[1]);
    const maxCalls = Number(m[2]);
    for (let i = 0; i < Number(m[3]); ++i) await session.run(feeds);
    const burst = [];
    await timeUntil(session, feeds, (n, ms) => n >= maxCalls || ms >= minMs, burst);
    times.push(...burst);
    process.stdout.write(`done ${burst.map((t) => t.toFixed(6)).join(',')}\n`);
  }
}

async function timeShape(session, feeds, args, label) {
  for (let i = 0; i < args.warmup; ++i) await session.run(feeds);
  let times = [];
  if (args.serve === '1') {
    times = await serveCalls(session, feeds, label);
  } else {
    await timeUntil(session, feeds,
      (n, ms) => n >= args.maxRuns || (n >= args.minRuns && ms >= 1e3 * args.minSeconds), times);
  }
  times.sort((a, b) => a - b);
  return { runs: times.length, median_ms: percentile(times, 0.5), p90_ms: percentile(times, 0.9) };
}

async function main() {
  const args = parseArgs(process.argv);
  const modelFile = path.join(args.modelsDir, args.model, args.onnx);
  const opset = args.onnx.match(/opset(\d+)/);
  const variant = `fp32-opset${opset ? opset[1] : '14'}`;
  const rssStartKiB = procStatusKiB('VmRSS');
  const inputs = args.shapes.map(([b, s]) => {
    const ids = readNpy(path.join(args.modelsDir, 'inputs', `ids_${b}x${s}.npy`), '<i8');
    if (ids.rows !== b || ids.cols !== s) throw new Error(`ids_${b}x${s}.npy has shape ${ids.rows}x${ids.cols}`);
    const dims = [b, s];
    return {
      b, s,
      feeds: {
        input_ids: new ort.Tensor('int64', ids.data, dims),
        attention_mask: new ort.Tensor('int64', new BigInt64Array(b * s).fill(1n), dims),
        token_type_ids: new ort.Tensor('int64', new BigInt64Array(b * s), dims),
      },
    };
  });
  const out = fs.openSync(args.out, 'a');
  for (const [ti, threads] of args.threads.entries()) {
    const session = await ort.InferenceSession.create(modelFile, {
      executionProviders: ['cpu'],
      graphOptimizationLevel: 'all',
      intraOpNumThreads: threads,
      interOpNumThreads: 1,
      executionMode: 'sequential',
    });
    for (const { b, s, feeds } of inputs) {
      const result = await session.run(feeds);
      const hidden = result.last_hidden_state;
      const refFile = args.refDir ? path.join(args.refDir, `ort_${args.model}_${b}x${s}.npy`) : null;
      const accuracy = {};
      if (refFile && args.writeRef === '1') {
        if (ti === 0) writeNpyFloat32(refFile, b * s, hidden.dims[2], hidden.data);
      } else if (refFile && fs.existsSync(refFile)) {
        const ref = readNpy(refFile, '<f4');
        if (ref.data.length !== hidden.data.length) throw new Error(`${refFile}: size differs from the output`);
        let maxAbs = 0;
        for (let i = 0; i < ref.data.length; ++i) maxAbs = Math.max(maxAbs, Math.abs(ref.data[i] - hidden.data[i]));
        accuracy.max_abs_diff = maxAbs;
      }
      const t = await timeShape(session, feeds, args, `${b}x${s} t=${threads}`);
      const row = {
        runtime: 'ort', variant, model: args.model, batch: b, seq: s, threads, ...accuracy, ...t,
        tokens_per_s: (b * s) / (t.median_ms / 1e3),
      };
      fs.writeSync(out, JSON.stringify(row) + '\n');
      console.log(`ort ${variant} ${args.model} ${b}x${s} t=${threads}: median ${t.median_ms.toFixed(2)} ms, ` +
                  `p90 ${t.p90_ms.toFixed(2)} ms, ${row.tokens_per_s.toFixed(0)} tok/s (${t.runs} runs)` +
                  (row.max_abs_diff === undefined ? '' : `, max |diff| to opset 14 ${row.max_abs_diff.toExponential(2)}`));
    }
    await session.release();
  }
  fs.writeSync(out, JSON.stringify({
    runtime: 'ort', variant, model: args.model, memory: true,
    start_rss_mib: rssStartKiB / 1024, peak_rss_mib: procStatusKiB('VmHWM') / 1024,
    version: ort.env.versions.node,
  }) + '\n');
  fs.closeSync(out);
}

main().catch((e) => {
  console.error(e.stack || String(e));
  process.exit(1);
});
