// Evaluation helpers shared by searches and training: accuracy and loss of a model on a data
// set, in evaluation mode, with recording off.
#pragma once

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <string>

#include "tnas/data/dataset.hpp"
#include "tnas/data/loader.hpp"
#include "tnas/nn/module.hpp"
#include "tnas/ops/loss.hpp"

namespace tnas::train {

struct EvalResult {
  double loss = 0;
  double accuracy = 0;
  int64_t count = 0;
};

// Mean loss and accuracy of `model` over `ds`. The model is put in eval mode and returned to
// the mode it was in.
inline EvalResult evaluate(nn::Module& model, const data::Dataset& ds, int64_t batch = 256,
                           int64_t max_samples = 0) {
  const bool was_training = model.is_training();
  model.eval();
  NoGrad ng;
  data::DataLoader loader(ds, {.batch_size = batch, .shuffle = false, .drop_last = false});
  data::Batch b;
  const Device dev = model.device();  // batches go where the model is
  EvalResult r;
  double loss_sum = 0;
  int64_t correct = 0;
  while (loader.next(b)) {
    Tensor logits = model.forward(b.x.to(dev));
    const int64_t n = int64_t(b.labels.size());
    loss_sum += cross_entropy(logits, b.labels).item() * double(n);
    auto pred = argmax_rows(logits);
    for (int64_t i = 0; i < n; ++i) correct += pred[i] == b.labels[i];
    r.count += n;
    if (max_samples > 0 && r.count >= max_samples) break;
  }
  model.train(was_training);
  TNAS_CHECK(r.count > 0, "evaluate: empty data set");
  r.loss = loss_sum / double(r.count);
  r.accuracy = double(correct) / double(r.count);
  return r;
}

// A one-line progress report with rate and ETA, rewritten in place on a terminal and printed
// every `every` calls otherwise (so logs stay readable).
class Progress {
 public:
  Progress(std::string what, int64_t total, bool enabled = true)
      : what_(std::move(what)), total_(total), enabled_(enabled), tty_(isatty_stderr()) {
    start_ = now();
  }
  void update(int64_t done, const std::string& extra = "") {
    if (!enabled_) return;
    const double t = now() - start_;
    if (!tty_ && done != total_ && t - last_ < 10.0) return;  // every 10 s in logs
    last_ = t;
    const double rate = t > 0 ? double(done) / t : 0;
    const double eta = rate > 0 ? double(total_ - done) / rate : 0;
    std::fprintf(stderr, "%s%s %lld/%lld  %.1f it/s  elapsed %.0fs  eta %.0fs  %s%s",
                 tty_ ? "\r" : "", what_.c_str(), (long long)done, (long long)total_, rate, t, eta,
                 extra.c_str(), tty_ ? "\033[K" : "\n");
    if (tty_ && done == total_) std::fputc('\n', stderr);
    std::fflush(stderr);
  }
  static double now() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
  }

 private:
  static bool isatty_stderr() { return ::isatty(2) != 0; }
  std::string what_;
  int64_t total_;
  bool enabled_, tty_;
  double start_ = 0, last_ = -1e9;
};

}  // namespace tnas::train
