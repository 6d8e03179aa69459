#pragma once
// <veomni/train/plot.hpp>: the loss curve of a run, drawn with PLplot
// (Debian: libplplot-dev, plplot-driver-cairo), torch-free.
//
//   loss_plot p{.title = "omni_moe (out/run1)", .train = {{1, 6.2}, ...}, .eval = {{30, 3.1}},
//               .lr = {{1, 1e-3}, ...}};
//   write_loss_plot(p, "out/loss_curve.png", "out/loss_curve.svg");
//
// Two panels over one step axis: the losses above (training loss as a line,
// evaluation loss as labelled markers, a legend naming both, a log y-axis
// when the losses span more than a decade), the learning rate below.
// PNG through PLplot's pngcairo driver (anti-aliased, real fonts through
// pango), SVG through its svg driver (text kept as text).
//
// Why PLplot: a plotting library in Debian that owns axes, ticks, log
// scales, legends and several output devices, with a C API a header can call;
// we write only what is ours (what to draw, plot_layout). PLplot keeps global
// state, so plots are drawn one at a time (a mutex here), by one rank.
#include <fcntl.h>
#include <plplot/plplot.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <mutex>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace veomni::train {

struct plot_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct loss_plot {
  std::string title;                               // e.g. the model and the run's output folder
  std::vector<std::pair<double, double>> train;    // (step, training loss)
  std::vector<std::pair<double, double>> eval;     // (step, evaluation loss)
  std::vector<std::pair<double, double>> lr;       // (step, learning rate)
};

// What the axes show, decided from the data alone (tested without drawing).
struct plot_layout {
  double x0 = 0, x1 = 1;  // step range
  bool log_y = false;     // the losses span more than a decade (all > 0)
  double y0 = 0, y1 = 1;  // loss range: data units, or log10 of them when log_y
  double lr1 = 1;         // the learning-rate panel's top
  double lr_unit = 1;     // the learning rate is drawn in units of this power of ten
};

inline plot_layout layout_of(const loss_plot& p) {
  plot_layout l;
  double xmin = std::numeric_limits<double>::infinity(), xmax = -xmin, ymin = xmin, ymax = -xmin, lrmax = 0;
  auto take = [&](const std::vector<std::pair<double, double>>& s, bool loss) {
    for (const auto& [x, y] : s) {
      if (!std::isfinite(x) || !std::isfinite(y)) continue;
      xmin = std::min(xmin, x), xmax = std::max(xmax, x);
      if (loss) ymin = std::min(ymin, y), ymax = std::max(ymax, y);
      else lrmax = std::max(lrmax, y);
    }
  };
  take(p.train, true);
  take(p.eval, true);
  take(p.lr, false);
  if (!(xmin <= xmax)) xmin = 0, xmax = 1;
  if (xmax <= xmin) xmax = xmin + 1;
  l.x0 = xmin, l.x1 = xmax;
  if (!(ymin <= ymax)) ymin = 0, ymax = 1;
  l.log_y = ymin > 0 && ymax / ymin > 10;
  if (l.log_y) {
    l.y0 = std::floor(std::log10(ymin) * 10) / 10, l.y1 = std::ceil(std::log10(ymax) * 10) / 10;
  } else {
    const double pad = ymax > ymin ? 0.05 * (ymax - ymin) : std::max(0.05 * std::abs(ymax), 0.05);
    l.y0 = ymin >= 0 ? std::max(0.0, ymin - pad) : ymin - pad, l.y1 = ymax + pad;
  }
  l.lr1 = lrmax > 0 ? lrmax * 1.08 : 1;
  l.lr_unit = lrmax > 0 ? std::pow(10.0, std::floor(std::log10(lrmax))) : 1;
  return l;
}

namespace detail {
inline bool has_device(const char* name) {
  std::vector<const char*> menu(256), devs(256);  // plgDevs fills arrays the caller sizes
  const char** m = menu.data();
  const char** d = devs.data();
  int n = static_cast<int>(devs.size());
  plgDevs(&m, &d, &n);
  for (int i = 0; i < n; ++i)
    if (std::string(devs[i]) == name) return true;
  return false;
}

inline void draw_loss_plot(const loss_plot& p, const plot_layout& l, const char* device, const std::string& path) {
  plsdev(device);
  plsfnam(path.c_str());
  plspage(0, 0, 1000, 700, 0, 0);
  plscolbg(255, 255, 255);
  plscol0(1, 30, 30, 30);     // axes and text
  plscol0(2, 31, 119, 180);   // training loss
  plscol0(3, 255, 127, 14);   // evaluation loss
  plscol0(4, 44, 160, 44);    // learning rate
  plscol0(5, 220, 220, 220);  // grid
  plinit();
  plfont(1);
  pladv(0);
  auto xs = [](const std::vector<std::pair<double, double>>& s, bool log) {
    std::vector<PLFLT> x, y;
    for (const auto& [a, b] : s)
      if (std::isfinite(a) && std::isfinite(b) && (!log || b > 0)) x.push_back(a), y.push_back(log ? std::log10(b) : b);
    return std::pair{x, y};
  };
  // the losses
  plvpor(0.10, 0.96, 0.39, 0.90);
  plwind(l.x0, l.x1, l.y0, l.y1);
  plcol0(5);
  plwidth(0.5);
  plbox("g", 0, 0, l.log_y ? "gl" : "g", 0, 0);
  plcol0(1);
  plwidth(1);
  plbox("bcst", 0, 0, l.log_y ? "bcnstlv" : "bcnstv", 0, 0);
  plschr(0, 1.2);
  plmtex("t", 1.8, 0.5, 0.5, p.title.c_str());
  plschr(0, 1.0);
  plmtex("l", 5.0, 0.5, 0.5, l.log_y ? "loss (log scale)" : "loss");
  static constexpr const char* dot = "#[0x25cf]";  // a filled circle, in the legend as on the plot
  const auto [tx, ty] = xs(p.train, l.log_y);
  const auto [ex, ey] = xs(p.eval, l.log_y);
  plcol0(2);
  plwidth(2);
  if (tx.size() > 1) plline(static_cast<PLINT>(tx.size()), tx.data(), ty.data());
  else if (!tx.empty()) plpoin(1, tx.data(), ty.data(), 17);
  plwidth(1);
  plcol0(3);
  if (!ex.empty()) {
    plschr(0, 0.8);
    plstring(static_cast<PLINT>(ex.size()), ex.data(), ey.data(), dot);
    plschr(0, 1.0);
  }
  // the legend: the training line, and the evaluation markers when there are any
  {
    const PLINT n = ex.empty() ? 1 : 2;
    PLINT opt[2] = {PL_LEGEND_LINE, PL_LEGEND_SYMBOL}, text_col[2] = {1, 1}, box_col[2] = {0, 0}, box_pat[2] = {0, 0},
          line_col[2] = {2, 3}, line_sty[2] = {1, 1}, sym_col[2] = {2, 3}, sym_num[2] = {1, 1};
    PLFLT box_scale[2] = {1, 1}, box_w[2] = {1, 1}, line_w[2] = {2, 1}, sym_scale[2] = {1, 0.8};
    const char* texts[2] = {"training loss", "evaluation loss"};
    const char* syms[2] = {dot, dot};
    PLFLT w = 0, h = 0;
    pllegend(&w, &h, PL_LEGEND_BACKGROUND | PL_LEGEND_BOUNDING_BOX, PL_POSITION_TOP | PL_POSITION_RIGHT | PL_POSITION_INSIDE,
             0.02, 0.03, 0.1, 0, 1, 1, 0, 0, n, opt, 0.6, 1.0, 2.0, 0.0, text_col, texts, box_col, box_pat, box_scale, box_w,
             line_col, line_sty, line_w, sym_col, sym_scale, sym_num, syms);
  }
  // the learning rate
  plvpor(0.10, 0.96, 0.10, 0.29);
  plwind(l.x0, l.x1, 0, l.lr1 / l.lr_unit);
  plcol0(5);
  plwidth(0.5);
  plbox("g", 0, 0, "g", 0, 0);
  plcol0(1);
  plwidth(1);
  plbox("bcnst", 0, 0, "bcnstv", 0, 3);
  char lr_label[64];
  std::snprintf(lr_label, sizeof lr_label, "lr (x 1e%d)", static_cast<int>(std::lround(std::log10(l.lr_unit))));
  plmtex("l", 5.0, 0.5, 0.5, l.lr_unit == 1 ? "lr" : lr_label);
  plmtex("b", 3.0, 0.5, 0.5, "step");
  auto [lx, ly] = xs(p.lr, false);
  for (auto& v : ly) v /= l.lr_unit;
  plcol0(4);
  plwidth(2);
  if (lx.size() > 1) plline(static_cast<PLINT>(lx.size()), lx.data(), ly.data());
  plwidth(1);
  plend1();
}

// PLplot ends the process on an error it cannot recover from (plexit), so
// what can fail is checked first: the device, and a file we can create. The
// plot goes to path.tmp, renamed over `path` once whole.
inline void draw_to(const loss_plot& p, const plot_layout& l, const char* device, const std::string& path) {
  if (!has_device(device))
    throw plot_error(std::string("PLplot has no '") + device + "' device (Debian: install plplot-driver-cairo)");
  const std::string tmp = path + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw plot_error("cannot write '" + tmp + "': " + std::strerror(errno));
  ::close(fd);
  draw_loss_plot(p, l, device, tmp);
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string why = std::strerror(errno);
    std::remove(tmp.c_str());
    throw plot_error("cannot rename '" + tmp + "' to '" + path + "': " + why);
  }
}
}  // namespace detail

// Writes the plot as PNG (png_path) and SVG (svg_path; "" for none). Throws
// plot_error naming what failed (a missing driver, an unwritable path).
inline void write_loss_plot(const loss_plot& p, const std::string& png_path, const std::string& svg_path = {}) {
  static std::mutex one_at_a_time;
  const std::lock_guard<std::mutex> lock(one_at_a_time);
  const plot_layout l = layout_of(p);
  detail::draw_to(p, l, "pngcairo", png_path);
  if (!svg_path.empty()) detail::draw_to(p, l, "svg", svg_path);
}

}  // namespace veomni::train
