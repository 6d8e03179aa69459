// A constant-evaluated training_step given a 33rd stream.
#include <veomni/core.hpp>
using namespace veomni;
#ifdef VEOMNI_COMPILE_FAIL
constexpr long count = 33;
#else
constexpr long count = 32;
#endif
constexpr training_step s = [] {
  training_step x;
  for (long i = 0; i < count; ++i) x.with(std::string_view("abcdefghijklmnopqrstuvwxyzABCDEFGHIJ").substr(static_cast<std::size_t>(i), 1), i + 1);
  return x;
}();
#ifndef VEOMNI_COMPILE_FAIL
static_assert(s.tokens_per_sample("a") == 1);
#endif
