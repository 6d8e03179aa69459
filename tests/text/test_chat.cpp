// Chat templates (issue 20, part 3): the Jinja subset of
// veomni/text/jinja.hpp against @huggingface/jinja 0.5.13, the reference
// (tests/text/chat_reference.mjs writes its answers into VEOMNI_TEST_REF_DIR
// as the fixture tokenizer.reference_chat).
//   1. helpers       reading the reference's jsonl files and the tokenizer configs
//   2. jinja         feature by feature (chat_features.jsonl), then error messages
//   3. chat render   the real Qwen3 and Llama 3 chat_templates on >= 200 conversations each
#include <doctest/doctest.h>

#include <veomni/text/jinja.hpp>

#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace {

namespace jinja = veomni::text::jinja;
using ordered_json = nlohmann::ordered_json;

// ---------------------------------------------------------------- 1. helpers

std::string reference_path(const std::string& file) { return std::string(VEOMNI_TEST_REF_DIR) + "/" + file; }

// One JSON object per line, in order (ordered_json keeps the key order `tojson` prints).
std::vector<ordered_json> read_jsonl(const std::string& path) {
  std::ifstream in(path);
  if (!in)
    FAIL("cannot read " << path << ": run the fixture first (ctest -R tokenizer.reference_chat, "
                        << "or node tests/text/chat_reference.mjs NPM_DIR " << VEOMNI_TEST_REF_DIR << ")");
  std::vector<ordered_json> out;
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) out.push_back(ordered_json::parse(line));
  return out;
}

ordered_json read_json(const std::string& path) {
  std::ifstream in(path);
  if (!in) FAIL("cannot read " << path << " (the npm fixtures: scripts/npm_fixtures.sh)");
  return ordered_json::parse(in);
}

std::string chat_template_of(const std::string& model_dir) {
  return read_json(model_dir + "/tokenizer_config.json").at("chat_template").get<std::string>();
}

// Where two renderings first differ, with some context either side.
std::string first_difference(const std::string& want, const std::string& got) {
  std::size_t i = 0;
  while (i < want.size() && i < got.size() && want[i] == got[i]) ++i;
  auto around = [&](const std::string& s) {
    std::size_t b = i < 40 ? 0 : i - 40;
    return ordered_json(s.substr(b, 80)).dump();
  };
  std::ostringstream os;
  os << "first difference at byte " << i << " (want " << want.size() << " bytes, got " << got.size() << ")\n"
     << "  want: " << around(want) << "\n  got:  " << around(got);
  return os.str();
}

std::string render(const std::string& source, const ordered_json& context) {
  return jinja::program(source).render(context);
}

// The message of the jinja::error that rendering `source` throws ("" if none).
std::string error_of(const std::string& source, const ordered_json& context = ordered_json::object()) {
  try {
    jinja::program(source).render(context);
  } catch (const jinja::error& e) {
    return e.what();
  }
  return "";
}

// Renders every conversation of a reference file with a model's chat_template.
void check_family(const std::string& model_dir, const std::string& file) {
  jinja::program chat(chat_template_of(model_dir), file);
  auto lines = read_jsonl(reference_path(file));
  CHECK(lines.size() >= 200);
  std::size_t equal = 0;
  for (std::size_t n = 0; n < lines.size(); ++n) {
    const auto& want = lines[n].at("text").get_ref<const std::string&>();
    std::string got;
    try {
      got = chat.render(lines[n].at("context"));
    } catch (const jinja::error& e) {
      FAIL_CHECK(file << " conversation " << n << " threw: " << e.what());
      continue;
    }
    if (got == want) ++equal;
    else FAIL_CHECK(file << " conversation " << n << ": " << first_difference(want, got));
  }
  MESSAGE(file << ": " << equal << " of " << lines.size() << " conversations rendered byte-equal");
  CHECK(equal == lines.size());
}

}  // namespace

// ------------------------------------------------------------------ 2. jinja

TEST_CASE("jinja: the header's example") {
  jinja::program chat{"{% for m in messages %}<|{{ m.role }}|>{{ m.content | trim }}\n"
                      "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"};
  nlohmann::json ctx = {{"messages", {{{"role", "user"}, {"content", " hi "}}}}, {"add_generation_prompt", true}};
  CHECK(chat.render(ctx) == "<|user|>hi\n<|assistant|>");
}

TEST_CASE("jinja: feature templates render as @huggingface/jinja renders them") {
  auto lines = read_jsonl(reference_path("chat_features.jsonl"));
  CHECK(lines.size() >= 60);
  std::size_t ok = 0;
  for (const auto& f : lines) {
    const std::string name = f.at("name").get<std::string>();
    const std::string source = f.at("template").get<std::string>();
    CAPTURE(name);
    CAPTURE(source);
    if (f.contains("error")) {  // the reference raises: so must we
      CAPTURE(f.at("error").get<std::string>());
      std::string err = error_of(source, f.at("context"));
      CHECK_MESSAGE(!err.empty(), name << ": rendered, but the reference raises");
      if (!err.empty()) ++ok;
      continue;
    }
    std::string got;
    try {
      got = render(source, f.at("context"));
    } catch (const jinja::error& e) {
      FAIL_CHECK(name << " threw: " << e.what());
      continue;
    }
    const auto& want = f.at("text").get_ref<const std::string&>();
    if (got == want) ++ok;
    else FAIL_CHECK(name << ": " << first_difference(want, got));
  }
  MESSAGE(ok << " of " << lines.size() << " feature templates match the reference");
}

TEST_CASE("jinja: syntax errors name the template, line and column") {
  CHECK(error_of("ok\n{{ a ! b }}") == "chat_template:2:6: unexpected character '!'");
  CHECK(error_of("{% if x %}\nnever closed") == "chat_template:1:1: missing {% endif %} for this {% if %}");
  CHECK(error_of("{% for x in xs %}{{ x }}") == "chat_template:1:1: missing {% endfor %} for this {% for %}");
  CHECK(error_of("{{ x ") == "chat_template:1:6: unexpected end of template inside a tag");
  CHECK(error_of("{% frobnicate %}") == "chat_template:1:4: unknown statement 'frobnicate'");
  CHECK(error_of("{{ 'abc }}") == "chat_template:1:4: unterminated string literal");
  CHECK(error_of("{{ 'a\\q' }}") == "chat_template:1:6: unexpected escaped character '\\q'");
  CHECK(error_of("{# open") == "chat_template:1:1: missing the end of the comment '#}'");
  CHECK(error_of("\n\n  {{ f(a=1, 2) }}") == "chat_template:3:13: positional arguments must come before keyword arguments");
  try {
    jinja::program("{{ ( }}", "qwen3.jinja");
    FAIL("no error");
  } catch (const jinja::error& e) {
    CHECK(std::string(e.what()) == "qwen3.jinja:1:6: unexpected '}}'");
  }
}

TEST_CASE("jinja: runtime errors name the template, line and the offending thing") {
  CHECK(error_of("line one\n{{ 'x' | shout }}") == "chat_template:2: unknown filter 'shout' (on string)");
  CHECK(error_of("{{ 1 is prime }}") == "chat_template:1: unknown test 'prime'");
  CHECK(error_of("\n\n{{ 'x'.shout() }}") == "chat_template:3: unknown method 'shout' of string");
  CHECK(error_of("{{ nope() }}") == "chat_template:1: cannot call 'nope': it is undefined");
  CHECK(error_of("{% set d.x = 1 %}", {{"d", ordered_json::object()}}) ==
        "chat_template:1: cannot set an attribute of a dict (only of a namespace())");
  CHECK(error_of("{% for c in 'abc' %}{% endfor %}") ==
        "chat_template:1: cannot loop over a string (a for loop takes a list or a dict)");
  CHECK(error_of("{{ (1, 2) }}") == "chat_template:1: cannot convert a tuple to JSON (the reference engine cannot either)");
}

TEST_CASE("jinja: range() refuses huge bounds and results, naming the template and line") {
  ordered_json big = {{"big", 1e17}, {"n", 1e10}};
  // 1e17 + 1 == 1e17 in doubles: the reference's loop never ends
  CHECK(error_of("\n{{ range(big, big + 100) }}", big) ==
        "chat_template:2: range(100000000000000000, 100000000000000100): 100000000000000000 is not a number "
        "between -2^53 and 2^53");
  // 10^10 numbers: the reference runs out of memory
  CHECK(error_of("{% for i in range(n) %}{% endfor %}", big) ==
        "chat_template:1: range(10000000000) would make 10000000000 numbers (at most 10000000)");
  CHECK(error_of("{{ range(0, 1, 0.0000000001) }}") ==
        "chat_template:1: range(0, 1, 1e-10) would make 10000000000 numbers (at most 10000000)");
  CHECK(error_of("{{ range(4503599627370496, 4503599627370497, 0.1) }}") ==
        "chat_template:1: range(4503599627370496, 4503599627370497, 0.1): the step 0.1 is too small to change "
        "4503599627370496");
  // at the limit and below, and fractional bounds, as the reference
  CHECK(render("{{ range(10000000) | length }}", {}) == "10000000");
  CHECK(render("{{ range(2.5) }} {{ range(0, 1, 0.25) }} {{ range(3, 0, -1.5) }}", {}) ==
        "[0, 1, 2] [0, 0.25, 0.5, 0.75] [3, 1.5]");
  CHECK(render("{{ range(-9007199254740992, -9007199254740990) | length }}", {}) == "2");
}

TEST_CASE("jinja: raise_exception's message reaches the caller") {
  const std::string src =
      "{% for m in messages %}\n"
      "{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}\n"
      "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}\n"
      "{% endif %}{% endfor %}";
  ordered_json ctx = {{"messages", {{{"role", "user"}}, {{"role", "user"}}}}};
  CHECK(error_of(src, ctx) ==
        "chat_template:3: raise_exception: Conversation roles must alternate user/assistant/user/assistant/...");
}

TEST_CASE("jinja: undefined values behave as in the reference") {
  CHECK(render("[{{ nothing }}][{{ nothing.a.b }}][{{ d.missing }}][{{ l[5] }}]",
               {{"d", ordered_json::object()}, {"l", {1}}}) == "[][][][]");
  CHECK(render("{{ nothing is defined }} {{ nothing ~ 'x' }} {{ 'x' in nothing }} {{ nothing == none }}", {}) ==
        "false x false true");
  CHECK(render("{{ nothing | default('d') }}", {}) == "d");
  CHECK(error_of("{{ nothing + 'x' }}") == "chat_template:1: cannot apply '+' to an undefined value (undefined + string)");
  CHECK(error_of("{{ nothing | length }}") == "chat_template:1: unknown filter 'length' (on undefined)");
  CHECK(error_of("{% for x in nothing %}{% endfor %}") ==
        "chat_template:1: cannot loop over a undefined (a for loop takes a list or a dict)");
}

TEST_CASE("jinja: strftime_now reads a fixed date from the context") {
  ordered_json ctx = {{"strftime_now", "2024-07-26 13:05"}};
  CHECK(render("{{ strftime_now('%d %b %Y') }}|{{ strftime_now('%B %m %H:%M %%') }}", ctx) ==
        "26 Jul 2024|July 07 13:05 %");
  CHECK(render("{{ strftime_now('%Y') | length }}", {}) == "4");
}

TEST_CASE("jinja: contexts in nlohmann::json and ordered_json") {
  jinja::program p("{{ d | tojson }}");
  CHECK(p.render(nlohmann::json{{"d", {{"b", 1}, {"a", 2.0}}}}) == "{\"a\": 2, \"b\": 1}");  // json sorts keys
  CHECK(p.render(ordered_json{{"d", {{"b", 1}, {"a", 2.5}}}}) == "{\"b\": 1, \"a\": 2.5}");
  CHECK(jinja::program("{{ x }}").render(nlohmann::json(nullptr)) == "");
  const jinja::program copy = p;  // copies share the parsed program
  CHECK(copy.render(ordered_json{{"d", {1}}}) == "[1]");
}

TEST_CASE("jinja: extensions where the reference raises") {
  CHECK(render("{{ x | d('n') }} {{ [1, 2] | count }} {{ 2.567 | round(2) }} {{ 6 is divisibleby(3) }} {{ 3 is eq 3 }}",
               {}) == "n 2 2.57 true true");
  CHECK(render("{{ 'a,b,c'.rsplit(',', 1) }} {{ 'hello'.find('l') }} {{ 'hello'.count('l') }}", {}) ==
        "[\"a,b\", \"c\"] 2 2");
}

// ------------------------------------------------------------ 3. chat render

TEST_CASE("chat: Qwen3's chat_template renders as @huggingface/jinja renders it") {
  check_family(VEOMNI_TEST_QWEN3, "chat_qwen3.jsonl");
}

TEST_CASE("chat: Llama 3's chat_template renders as @huggingface/jinja renders it") {
  check_family(VEOMNI_TEST_LLAMA3, "chat_llama3.jsonl");
}
