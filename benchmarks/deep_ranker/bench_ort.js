#!/usr/bin/env node
// SPDX-License-Identifier: Apache-2.0
//
// ONNX Runtime side of the fine-ranker benchmark (see docs/fine-ranker-benchmark.md).
//
// Loads <models-dir>/<model>/<export>.onnx (written by make_models.py:
// "usual", the per-example export whose inputs all have the candidate axis,
// or "careful", the per-request export with batch-1 user inputs) into
// onnxruntime-node's CPU execution provider (graph optimisation "all", one
// intra-op and one inter-op thread, sequential execution), and times
// session.run() on <models-dir>/<model>/requests/nc<n>.safetensors (one user,
// n candidates, as DeepRankerBatch's arrays; every runtime reads it). The feeds
// are built outside the timed region, as funnel's and PyTorch's inputs are:
// for the usual export that includes broadcasting the user's features and
// padded history (with its 0/1 mask) to every candidate, which a caller
// would otherwise pay per request.
//
// onnxruntime-node comes from benchmarks/bert/node_modules (the encoder
// benchmark installs it; run_deep_ranker_benchmark.sh does if missing).
//
// One JSON line per request size is appended to --out (latency p50 / p99 /
// mean in ms, candidates/s), and each request's outputs [nc, T] are written
// to --outputs-dir as ort-<export>_<model>_nc<n>.npy (float32), which the
// report compares with funnel's.
//
//   node benchmarks/deep_ranker/bench_ort.js --models-dir DIR --model default \
//        --export usual --out results.jsonl --outputs-dir DIR [--candidates 1,100,1000]
//        [--warmup 3] [--min-runs 100] [--min-seconds 2] [--max-seconds 10] [--max-runs 2000]

'use strict';

const fs = require('fs');
const path = require('path');
const ort = require(path.join(__dirname, '..', 'bert', 'node_modules', 'onnxruntime-node'));

function parseArgs(argv) {
  const args = {
    modelsDir: null, model: null, export: null, out: null, outputsDir: null,
    candidates: '1,100,1000', warmup: 3, minRuns: 100, minSeconds: 2, maxSeconds: 10,
    maxRuns: 2000,
  };
  const names = {
    '--models-dir': 'modelsDir', '--model': 'model', '--export': 'export', '--out': 'out',
    '--outputs-dir': 'outputsDir', '--candidates': 'candidates', '--warmup': 'warmup',
    '--min-runs': 'minRuns', '--min-seconds': 'minSeconds', '--max-seconds': 'maxSeconds',
    '--max-runs': 'maxRuns',
  };
  for (let i = 2; i < argv.length; i += 2) {
    const key = names[argv[i]];
    if (key === undefined || i + 1 >= argv.length) {
      throw new Error(`bench_ort.js: unknown option or missing value: ${argv[i]}`);
    }
    args[key] = argv[i + 1];
  }
  for (const k of ['modelsDir', 'model', 'export', 'out', 'outputsDir']) {
    if (!args[k]) throw new Error(`bench_ort.js: --${k.replace(/[A-Z]/g, (c) => '-' + c.toLowerCase())} is required`);
  }
  if (args.export !== 'usual' && args.export !== 'careful') {
    throw new Error(`bench_ort.js: --export is usual or careful, not ${args.export}`);
  }
  for (const k of ['warmup', 'minRuns', 'minSeconds', 'maxSeconds', 'maxRuns']) args[k] = Number(args[k]);
  args.candidates = args.candidates.split(',').map(Number);
  return args;
}

// Reads a safetensors file: {name: {dtype, shape, data (typed array)}}.
function readSafetensors(file) {
  const buf = fs.readFileSync(file);
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.toString('utf8', 8, 8 + n));
  const base = 8 + n;
  const types = { F32: Float32Array, I32: Int32Array, I64: BigInt64Array };
  const out = {};
  for (const [name, info] of Object.entries(header)) {
    if (name === '__metadata__') continue;
    const Type = types[info.dtype];
    if (!Type) throw new Error(`${file}: tensor ${name} has unsupported dtype ${info.dtype}`);
    const [begin, end] = info.data_offsets;
    // Copy into an aligned buffer (the data section need not be aligned in memory).
    const bytes = buf.subarray(base + begin, base + end);
    const data = new Type(bytes.length / Type.BYTES_PER_ELEMENT);
    Buffer.from(data.buffer).set(bytes);
    out[name] = { dtype: info.dtype, shape: info.shape, data };
  }
  return out;
}

function toInt64(int32) {
  const out = new BigInt64Array(int32.length);
  for (let i = 0; i < int32.length; ++i) out[i] = BigInt(int32[i]);
  return out;
}

// Feeds of one request (one user) for the chosen export.
function buildFeeds(req, exportName, historyLength) {
  const nc = req.candidate_user.shape[0];
  const d = req.candidate_vectors.shape[1];
  if (req.history_offsets.shape[0] !== 2) throw new Error('a request file must hold exactly one user');
  const n = Number(req.history_offsets.data[1]);
  const nuc = req.user_categorical.shape[1];
  const nun = req.user_numeric.shape[1];
  const nic = req.candidate_categorical.shape[1];
  const nin = req.candidate_numeric.shape[1];
  const feeds = {
    candidate_vectors: new ort.Tensor('float32', req.candidate_vectors.data, [nc, d]),
    candidate_categorical: new ort.Tensor('int64', toInt64(req.candidate_categorical.data), [nc, nic]),
    candidate_numeric: new ort.Tensor('float32', req.candidate_numeric.data, [nc, nin]),
  };
  const uc = toInt64(req.user_categorical.data);
  const un = req.user_numeric.data;
  const hv = req.history_vectors.data;
  const hc = toInt64(req.history_category.data);
  const ht = toInt64(req.history_type.data);
  const hr = toInt64(req.history_recency.data);
  if (exportName === 'careful') {
    Object.assign(feeds, {
      user_categorical: new ort.Tensor('int64', uc, [1, nuc]),
      user_numeric: new ort.Tensor('float32', un, [1, nun]),
      history_vectors: new ort.Tensor('float32', hv, [n, d]),
      history_category: new ort.Tensor('int64', hc, [n]),
      history_type: new ort.Tensor('int64', ht, [n]),
      history_recency: new ort.Tensor('int64', hr, [n]),
    });
    return feeds;
  }
  // usual: everything per candidate; history padded to history_length.
  const nh = historyLength;
  if (n > nh) throw new Error(`history of ${n} events exceeds history_length ${nh}`);
  const tile = (Type, src, width, rows, padTo) => {
    const stride = padTo * width;
    const out = new Type(rows * stride);
    for (let r = 0; r < rows; ++r) out.set(src, r * stride);  // rest stays 0 (padding)
    return out;
  };
  const mask = new Float32Array(nh);
  mask.fill(1, 0, n);
  Object.assign(feeds, {
    user_categorical: new ort.Tensor('int64', tile(BigInt64Array, uc, nuc, nc, 1), [nc, nuc]),
    user_numeric: new ort.Tensor('float32', tile(Float32Array, un, nun, nc, 1), [nc, nun]),
    history_vectors: new ort.Tensor('float32', tile(Float32Array, hv, d, nc, nh), [nc, nh, d]),
    history_category: new ort.Tensor('int64', tile(BigInt64Array, hc, 1, nc, nh), [nc, nh]),
    history_type: new ort.Tensor('int64', tile(BigInt64Array, ht, 1, nc, nh), [nc, nh]),
    history_recency: new ort.Tensor('int64', tile(BigInt64Array, hr, 1, nc, nh), [nc, nh]),
    history_mask: new ort.Tensor('float32', tile(Float32Array, mask, 1, nc, nh), [nc, nh]),
  });
  return feeds;
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

function percentile(sorted, p) {
  // Nearest rank: the smallest value with at least p of the runs at or below it.
  return sorted[Math.max(0, Math.ceil(p * sorted.length) - 1)];
}

async function timeRequest(session, feeds, args) {
  for (let i = 0; i < args.warmup; ++i) await session.run(feeds);
  const times = [];
  const begin = process.hrtime.bigint();
  for (;;) {
    const t0 = process.hrtime.bigint();
    await session.run(feeds);
    const t1 = process.hrtime.bigint();
    times.push(Number(t1 - t0) / 1e6);
    const elapsed = Number(t1 - begin) / 1e9;
    if (times.length >= args.maxRuns) break;
    if (times.length >= args.minRuns && elapsed >= args.minSeconds) break;
    if (times.length >= 10 && elapsed >= args.maxSeconds) break;
  }
  const mean = times.reduce((a, b) => a + b, 0) / times.length;
  times.sort((a, b) => a - b);
  return { runs: times.length, p50_ms: percentile(times, 0.5), p99_ms: percentile(times, 0.99), mean_ms: mean };
}

async function main() {
  const args = parseArgs(process.argv);
  const modelDir = path.join(args.modelsDir, args.model);
  const config = JSON.parse(fs.readFileSync(path.join(modelDir, 'config.json'), 'utf8'));
  const session = await ort.InferenceSession.create(path.join(modelDir, `${args.export}.onnx`), {
    executionProviders: ['cpu'],
    graphOptimizationLevel: 'all',
    intraOpNumThreads: 1,
    interOpNumThreads: 1,
    executionMode: 'sequential',
  });
  const out = fs.openSync(args.out, 'a');
  for (const nc of args.candidates) {
    const req = readSafetensors(path.join(modelDir, 'requests', `nc${nc}.safetensors`));
    const feeds = buildFeeds(req, args.export, config.history_length);
    const result = await session.run(feeds);
    const o = result.outputs;
    if (o.dims[0] !== nc) throw new Error(`outputs have ${o.dims[0]} rows, expected ${nc}`);
    writeNpyFloat32(path.join(args.outputsDir, `ort-${args.export}_${args.model}_nc${nc}.npy`),
                    o.dims[0], o.dims[1], o.data);
    const t = await timeRequest(session, feeds, args);
    const row = {
      runtime: 'ort', variant: args.export, model: args.model, candidates: nc, threads: 1, ...t,
      candidates_per_s: nc / (t.p50_ms / 1e3), version: ort.env.versions.node,
    };
    fs.writeSync(out, JSON.stringify(row) + '\n');
    console.log(`ort ${args.export} ${args.model} nc=${nc}: p50 ${t.p50_ms.toFixed(3)} ms, ` +
                `p99 ${t.p99_ms.toFixed(3)} ms, ${row.candidates_per_s.toFixed(0)} candidates/s (${t.runs} runs)`);
  }
  await session.release();
  fs.closeSync(out);
}

main().catch((e) => {
  console.error(e.stack || String(e));
  process.exit(1);
});
