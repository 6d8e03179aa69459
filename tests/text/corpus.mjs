// The seeded random source behind the tokenizer's generated text: the test
// reference's corpus (tests/text/tokenizer_reference.mjs, whose output the C++
// tests compare against) and the benchmark's corpus
// (benchmarks/bench_tokenizer_js.mjs) both draw from it, so the same code
// makes both and every run makes the same bytes.
//
//   import { randomSource } from './corpus.mjs';
//   const { rnd, int, pick, cp, run } = randomSource(2024);
//   rnd()                          // a double in [0, 1)
//   int(10)                        // an integer in [0, 10)
//   pick(['a', 'b'])               // one element
//   cp(0x4E00, 0x9FA5)             // one character in [lo, hi] (code points, inclusive)
//   run(3, () => pick(['x', 'y'])) // three draws joined: "xyx", say

// mulberry32: a small seeded PRNG (32-bit state), so the corpus is the same on every run.
export function prng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6D2B79F5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

// A prng(seed) and the draws built on it; each call of each draws from the one sequence.
export function randomSource(seed) {
  const rnd = prng(seed);
  const int = (n) => Math.floor(rnd() * n);
  const pick = (xs) => xs[int(xs.length)];
  const cp = (lo, hi) => String.fromCodePoint(lo + int(hi - lo + 1));
  const run = (n, f) => Array.from({ length: n }, f).join('');
  return { rnd, int, pick, cp, run };
}
