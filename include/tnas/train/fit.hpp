// train::fit: training a network from scratch, DARTS' train.py recipe: SGD with momentum (or
// Adam) and weight decay, cosine annealing per epoch, gradient clipping, augmentation, the
// auxiliary loss and the drop-path ramp of a DartsNetwork, optional label smoothing, a time budget,
// per-epoch CSV metrics, a checkpoint per epoch, and exact resume.
//
// represents: one training run of `model` on `train` with evaluation on `eval` (a validation
//   or test set), described by FitOptions.
// requires: model's parameters are float32 tensors on one device (the CPU or a device backend;
//   the DataLoader's float32 batches are moved to it); the data sets are valid
//   (data::Dataset::check) with as many classes as the model outputs.
// ensures: on the CPU, a run interrupted (epochs_this_run, max_steps, budget_seconds) and
//   resumed from out_dir/train.ckpt with the same options ends with the same weights, bit for
//   bit, as the uninterrupted run: the checkpoint holds the model's state dict, the optimizer's
//   state, the epoch and the position in it, the scheduler's t, the partial sums of the epoch
//   in progress, the drop-path generator's state, the metrics history and the elapsed time;
//   the DataLoader's batches and augmentation follow from (seed, epoch, position) alone. Every
//   failure to read a checkpoint is a tnas::Error naming the file.
//
// Per step: loss = CE(logits) (+ auxiliary_weight * CE(aux logits) with a DartsNetwork's
// auxiliary head), where CE is smoothed_cross_entropy; backward; clip_grad_norm; optimizer step.
// Per epoch e (0-based): lr = cosine(e) with T_max = epochs, set before the epoch as DARTS does;
// drop-path probability = drop_path_prob * e / epochs. The logged train loss is the
// sample-weighted mean of the optimised loss (auxiliary term included), as DARTS logs it.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "tnas/autograd/engine.hpp"
#include "tnas/data/dataset.hpp"
#include "tnas/data/loader.hpp"
#include "tnas/io/archive.hpp"
#include "tnas/nn/module.hpp"
#include "tnas/ops/elementwise.hpp"
#include "tnas/ops/loss.hpp"
#include "tnas/ops/reduce.hpp"
#include "tnas/optim/adam.hpp"
#include "tnas/optim/clip.hpp"
#include "tnas/optim/schedule.hpp"
#include "tnas/optim/sgd.hpp"
#include "tnas/train/evaluate.hpp"
#include "tnas/train/network.hpp"

namespace tnas::train {

// The optimizer of a fit: DARTS' SGD with momentum, or Adam (binary networks train better
// with it: its per-parameter step size suits latent weights whose sign is all that counts).
// The checkpoint's optimizer state names its kind; resuming with the other one is an error.
enum class FitOptimizer { sgd, adam };

struct FitOptions {
  int epochs = 600;         // DARTS: 600 on CIFAR-10
  int64_t batch_size = 96;  // DARTS: 96
  double lr = 0.025;        // initial lr of the cosine schedule
  double lr_min = 0;        // eta_min
  double momentum = 0.9;    // SGD only
  FitOptimizer optimizer = FitOptimizer::sgd;
  double adam_beta1 = 0.9, adam_beta2 = 0.999;  // Adam only
  double weight_decay = 3e-4;
  bool nesterov = false;
  double grad_clip = 5;           // max global gradient norm; 0: no clipping
  bool drop_last = false;         // drop the last incomplete batch of each epoch
  data::Augment augment;          // passed to the DataLoader as is (crop, flip, cutout, normalise)
  double auxiliary_weight = 0.4;  // weight of a DartsNetwork's auxiliary loss (when it has one)
  double drop_path_prob = -1;     // final drop-path probability; < 0: the DartsNetwork's config
  double label_smoothing = 0;     // epsilon of smoothed_cross_entropy
  double budget_seconds = 0;      // stop (at a step boundary) once the run has taken this long
                                  // in all, resumed calls included; 0: no limit
  int64_t steps_per_epoch = 0;    // cap on steps per epoch; 0: the whole training set
  int64_t max_steps = 0;          // stop this call after this many steps; 0: no limit
  int epochs_this_run = 0;        // stop this call after this many epochs; 0: run to the end
  int eval_every = 1;             // evaluate every k epochs (and always at the end); 0: at the end
  int64_t eval_batch = 256;
  std::filesystem::path out_dir;  // train_log.csv and train.ckpt go here; empty: none written
  bool resume = false;            // continue from out_dir/train.ckpt when it exists
  bool verbose = true;            // per-epoch lines and a progress line on stderr
  uint64_t seed = 0;              // the DataLoader's shuffles and augmentation
};

// One epoch's metrics. eval_* are NaN for an epoch without evaluation.
struct FitEpoch {
  int epoch = 0;  // 1-based
  double lr = 0;
  double train_loss = 0, train_acc = 0;
  double eval_loss = std::numeric_limits<double>::quiet_NaN();
  double eval_acc = std::numeric_limits<double>::quiet_NaN();
  double seconds = 0;  // elapsed since the run began (resumed calls included)
  int64_t steps = 0;
  double drop_path_prob = 0;
};

struct FitResult {
  // The final model on the evaluation set (NaN when that set is empty).
  double eval_loss = std::numeric_limits<double>::quiet_NaN();
  double eval_acc = std::numeric_limits<double>::quiet_NaN();
  // The best evaluation accuracy over the history, and its epoch (0: none).
  double best_eval_acc = std::numeric_limits<double>::quiet_NaN();
  int best_epoch = 0;
  // The last epoch's training metrics (of the partial epoch when the run stopped inside one).
  double train_loss = std::numeric_limits<double>::quiet_NaN();
  double train_acc = std::numeric_limits<double>::quiet_NaN();
  std::vector<FitEpoch> history;      // completed epochs, resumed ones included
  double seconds = 0;                 // elapsed in all, resumed calls included
  int epochs_done = 0;                // completed epochs
  int64_t steps = 0;                  // steps taken by this call
  bool stopped_by_budget = false;     // budget_seconds ran out
  bool stopped_by_max_steps = false;  // max_steps reached
  bool resumed = false;
};

// (1 - eps) * CE(logits, labels) + eps * mean(-log_softmax(logits)): cross-entropy against the
// targets (1 - eps) * onehot + eps / K (label smoothing); plain cross-entropy when eps == 0.
inline Tensor smoothed_cross_entropy(const Tensor& logits, std::span<const int32_t> labels,
                                     double eps) {
  TNAS_CHECK(eps >= 0 && eps <= 1, "smoothed_cross_entropy: label smoothing must be in [0, 1], ",
             "got ", eps);
  Tensor ce = cross_entropy(logits, labels);
  if (eps == 0) return ce;
  return add(scale(ce, 1 - eps), scale(mean(log_softmax(logits)), -eps));
}

namespace detail {

inline nlohmann::json num_or_null(double v) {
  return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr);
}
inline double num_from(const nlohmann::json& j, const char* key) {
  const nlohmann::json& v = j.at(key);
  return v.is_null() ? std::numeric_limits<double>::quiet_NaN() : v.get<double>();
}
inline nlohmann::json to_json(const FitEpoch& r) {
  return {{"epoch", r.epoch},
          {"lr", r.lr},
          {"train_loss", num_or_null(r.train_loss)},
          {"train_acc", num_or_null(r.train_acc)},
          {"eval_loss", num_or_null(r.eval_loss)},
          {"eval_acc", num_or_null(r.eval_acc)},
          {"seconds", r.seconds},
          {"steps", r.steps},
          {"drop_path_prob", r.drop_path_prob}};
}
inline FitEpoch fit_epoch_from_json(const nlohmann::json& j) {
  FitEpoch r;
  r.epoch = j.at("epoch").get<int>();
  r.lr = j.at("lr").get<double>();
  r.train_loss = num_from(j, "train_loss");
  r.train_acc = num_from(j, "train_acc");
  r.eval_loss = num_from(j, "eval_loss");
  r.eval_acc = num_from(j, "eval_acc");
  r.seconds = j.at("seconds").get<double>();
  r.steps = j.at("steps").get<int64_t>();
  r.drop_path_prob = j.at("drop_path_prob").get<double>();
  return r;
}

inline constexpr const char* kCsvHeader =
    "epoch,lr,train_loss,train_acc,eval_loss,eval_acc,seconds\n";

inline void write_csv_row(std::ostream& os, const FitEpoch& r) {
  char buf[256];
  std::snprintf(buf, sizeof buf, "%d,%.9g,%.9g,%.9g,%.9g,%.9g,%.3f\n", r.epoch, r.lr, r.train_loss,
                r.train_acc, r.eval_loss, r.eval_acc, r.seconds);
  os << buf;
}

// Where a run stands: what a checkpoint saves besides the model and optimizer.
struct FitState {
  int epoch = 0;         // the epoch in progress (0-based), or the next one at a boundary
  int64_t step = 0;      // steps done in it
  int64_t position = 0;  // samples of it handed out by the DataLoader
  double loss_sum = 0;   // sample-weighted loss over those steps
  int64_t correct = 0, count = 0;
  double seconds = 0;
  std::vector<FitEpoch> history;
};

inline std::string encode(double v) {
  return optim::detail::encode(v);
}

inline void save_fit_checkpoint(const std::filesystem::path& path, const nn::Module& model,
                                const optim::Optimizer& opt, const optim::CosineAnnealingLR& sched,
                                DartsNetwork* darts, const FitOptions& o, const FitState& s) {
  io::Archive a;
  for (auto& [k, t] : model.state_dict()) a.tensors.emplace_back("model." + k, t);
  a.add("optim.", opt.state());
  nlohmann::json h = nlohmann::json::array();
  for (auto& r : s.history) h.push_back(to_json(r));
  a.meta["tnas.kind"] = "fit_checkpoint";
  a.meta["fit.model"] = model.name();
  a.meta["fit.seed"] = std::to_string(o.seed);
  a.meta["fit.epochs"] = std::to_string(o.epochs);
  a.meta["fit.batch_size"] = std::to_string(o.batch_size);
  a.meta["fit.epoch"] = std::to_string(s.epoch);
  a.meta["fit.step"] = std::to_string(s.step);
  a.meta["fit.position"] = std::to_string(s.position);
  a.meta["fit.loss_sum"] = encode(s.loss_sum);
  a.meta["fit.correct"] = std::to_string(s.correct);
  a.meta["fit.count"] = std::to_string(s.count);
  a.meta["fit.sched_t"] = std::to_string(sched.t());
  a.meta["fit.seconds"] = encode(s.seconds);
  a.meta["fit.history"] = h.dump();
  if (darts) {
    a.meta["fit.drop_path_rng"] = darts->drop_path_rng().state();
    a.meta["fit.drop_path_prob"] = encode(darts->drop_path_prob());
  }
  io::write(path, a);
}

// Restores model, optimizer and generator state from `path`; returns where the run stood.
// Every error names the file.
inline FitState load_fit_checkpoint(const std::filesystem::path& path, nn::Module& model,
                                    optim::Optimizer& opt, DartsNetwork* darts,
                                    const FitOptions& o) {
  const std::string p = path.string();
  io::Archive a = io::read(path);  // names the file on every failure
  try {
    auto expect = [&](const char* key, const std::string& mine, const char* what) {
      const std::string& saved = a.meta_at(key);
      TNAS_CHECK(saved == mine, "the checkpoint was made with ", what, " ", saved,
                 ", this run has ", mine, "; resume with the same options");
    };
    TNAS_CHECK(a.meta_at("tnas.kind") == "fit_checkpoint", "it is a '", a.meta_at("tnas.kind"),
               "' archive, not a train::fit checkpoint");
    expect("fit.seed", std::to_string(o.seed), "seed");
    expect("fit.epochs", std::to_string(o.epochs), "epochs");
    expect("fit.batch_size", std::to_string(o.batch_size), "batch_size");
    FitState s;
    s.epoch = std::stoi(a.meta_at("fit.epoch"));
    s.step = std::stoll(a.meta_at("fit.step"));
    s.position = std::stoll(a.meta_at("fit.position"));
    s.loss_sum = optim::detail::decode(a.meta_at("fit.loss_sum"), "fit.loss_sum");
    s.correct = std::stoll(a.meta_at("fit.correct"));
    s.count = std::stoll(a.meta_at("fit.count"));
    s.seconds = optim::detail::decode(a.meta_at("fit.seconds"), "fit.seconds");
    for (auto& j : nlohmann::json::parse(a.meta_at("fit.history")))
      s.history.push_back(fit_epoch_from_json(j));
    TNAS_CHECK(s.epoch >= 0 && s.epoch <= o.epochs && s.step >= 0 && s.position >= 0, "epoch ",
               s.epoch, ", step ", s.step, ", position ", s.position, " are out of range");
    const bool has_rng = a.meta.count("fit.drop_path_rng") > 0;
    TNAS_CHECK(has_rng == (darts != nullptr), "the checkpoint was saved from ",
               has_rng ? "a DartsNetwork" : "a model other than a DartsNetwork", " ('",
               a.meta_at("fit.model"), "'), this model is ", model.name());
    model.load_state_dict(a.extract("model.").tensors);
    opt.load_state(a.extract("optim."));
    if (darts) {
      darts->drop_path_rng().set_state(a.meta_at("fit.drop_path_rng"));
      darts->set_drop_path_prob(
          optim::detail::decode(a.meta_at("fit.drop_path_prob"), "fit.drop_path_prob"));
    }
    return s;
  } catch (const Error& e) {
    TNAS_FAIL("train::fit: cannot resume from '", p, "': ", e.what());
  } catch (const std::exception& e) {  // malformed numbers or history JSON
    TNAS_FAIL("train::fit: cannot resume from '", p, "': corrupt metadata: ", e.what());
  }
}

}  // namespace detail

// Trains `model` on `train` and evaluates it on `eval` (see the top of this file).
inline FitResult fit(nn::Module& model, const data::Dataset& train, const data::Dataset& eval,
                     const FitOptions& o) {
  TNAS_CHECK(o.epochs >= 1 && o.batch_size >= 1 && o.eval_batch >= 1 && o.eval_every >= 0 &&
                 o.epochs_this_run >= 0 && o.steps_per_epoch >= 0 && o.max_steps >= 0 &&
                 o.grad_clip >= 0 && o.budget_seconds >= 0 && o.auxiliary_weight >= 0,
             "train::fit: need epochs, batch_size, eval_batch >= 1 and eval_every, ",
             "epochs_this_run, steps_per_epoch, max_steps, grad_clip, budget_seconds, ",
             "auxiliary_weight >= 0; got epochs ", o.epochs, ", batch_size ", o.batch_size,
             ", eval_batch ", o.eval_batch, ", eval_every ", o.eval_every);
  TNAS_CHECK(o.label_smoothing >= 0 && o.label_smoothing <= 1, "train::fit: label_smoothing ",
             o.label_smoothing, " is outside [0, 1]");
  TNAS_CHECK(o.resume ? !o.out_dir.empty() : true,
             "train::fit: resume needs out_dir (where train.ckpt is)");
  DartsNetwork* darts = dynamic_cast<DartsNetwork*>(&model);
  const double dp_max =
      darts ? (o.drop_path_prob >= 0 ? o.drop_path_prob : darts->config().drop_path_prob) : 0.0;
  TNAS_CHECK(dp_max >= 0 && dp_max < 1, "train::fit: drop_path_prob must be in [0, 1), got ",
             dp_max);
  const bool use_aux = darts && darts->has_auxiliary() && o.auxiliary_weight > 0;

  std::vector<Tensor> params = model.parameters();
  std::unique_ptr<optim::Optimizer> opt_owner;
  if (o.optimizer == FitOptimizer::adam)
    opt_owner =
        std::make_unique<optim::Adam>(params, optim::AdamOptions{.lr = o.lr,
                                                                 .beta1 = o.adam_beta1,
                                                                 .beta2 = o.adam_beta2,
                                                                 .weight_decay = o.weight_decay});
  else
    opt_owner =
        std::make_unique<optim::SGD>(params, optim::SGDOptions{.lr = o.lr,
                                                               .momentum = o.momentum,
                                                               .weight_decay = o.weight_decay,
                                                               .nesterov = o.nesterov});
  optim::Optimizer& opt = *opt_owner;
  optim::CosineAnnealingLR sched(opt, o.epochs, o.lr_min);
  data::DataLoader loader(train, {.batch_size = o.batch_size,
                                  .shuffle = true,
                                  .drop_last = o.drop_last,
                                  .seed = o.seed,
                                  .augment = o.augment});
  int64_t per_epoch = loader.batches_per_epoch();
  if (o.steps_per_epoch > 0) per_epoch = std::min(per_epoch, o.steps_per_epoch);
  TNAS_CHECK(per_epoch >= 1, "train::fit: the training set (", train.size(),
             " samples) holds no batch of ", o.batch_size, o.drop_last ? " with drop_last" : "");

  FitResult res;
  detail::FitState st;
  const std::filesystem::path ckpt =
      o.out_dir.empty() ? std::filesystem::path() : o.out_dir / "train.ckpt";
  const std::filesystem::path csv =
      o.out_dir.empty() ? std::filesystem::path() : o.out_dir / "train_log.csv";
  if (!o.out_dir.empty()) std::filesystem::create_directories(o.out_dir);
  if (o.resume && std::filesystem::exists(ckpt)) {
    st = detail::load_fit_checkpoint(ckpt, model, opt, darts, o);
    res.resumed = true;
    if (o.verbose)
      std::fprintf(stderr, "train: resumed from %s at epoch %d, step %lld\n", ckpt.string().c_str(),
                   st.epoch + 1, (long long)st.step);
  } else if (o.resume && o.verbose) {
    std::fprintf(stderr, "train: no checkpoint at %s, starting afresh\n", ckpt.string().c_str());
  }
  if (!csv.empty()) {  // afresh, or rewritten from the checkpoint's history
    std::ofstream f(csv, std::ios::trunc);
    TNAS_CHECK(f.good(), "train::fit: cannot write '", csv.string(), "'");
    f << detail::kCsvHeader;
    for (auto& r : st.history) detail::write_csv_row(f, r);
  }

  const double t0 = Progress::now() - st.seconds;
  auto elapsed = [&] { return Progress::now() - t0; };
  auto evaluate_now = [&](double& loss, double& acc) {
    if (eval.size() == 0) return;
    EvalResult e = evaluate(model, eval, o.eval_batch);
    loss = e.loss;
    acc = e.accuracy;
  };
  auto save = [&] {
    if (ckpt.empty()) return;
    st.seconds = elapsed();
    detail::save_fit_checkpoint(ckpt, model, opt, sched, darts, o, st);
  };

  const int first_epoch = st.epoch;
  const int last_epoch =
      o.epochs_this_run > 0 ? std::min(o.epochs, first_epoch + o.epochs_this_run) : o.epochs;
  bool stopped = false;
  data::Batch b;
  const Device dev = model.device();  // batches go where the model is
  for (int epoch = first_epoch; epoch < last_epoch && !stopped; ++epoch) {
    st.epoch = epoch;
    sched.set_t(epoch);
    if (darts) darts->set_drop_path_prob(dp_max * double(epoch) / double(o.epochs));
    loader.seek(epoch, st.step > 0 ? st.position : 0);
    model.train();
    Progress prog("train epoch " + std::to_string(epoch + 1) + "/" + std::to_string(o.epochs),
                  per_epoch, o.verbose);
    while (st.step < per_epoch) {
      if (o.budget_seconds > 0 && elapsed() >= o.budget_seconds) {
        res.stopped_by_budget = stopped = true;
        break;
      }
      if (o.max_steps > 0 && res.steps >= o.max_steps) {
        res.stopped_by_max_steps = stopped = true;
        break;
      }
      TNAS_CHECK(loader.next(b), "train::fit: the DataLoader ended epoch ", epoch + 1, " after ",
                 st.step, " batches, expected ", per_epoch);
      opt.zero_grad();
      Tensor logits = model.forward(b.x.to(dev));
      Tensor loss = smoothed_cross_entropy(logits, b.labels, o.label_smoothing);
      if (use_aux) {
        const Tensor& aux = darts->last_aux_logits();
        TNAS_CHECK(aux.defined(), "train::fit: ", model.name(),
                   " computed no auxiliary logits in training mode");
        loss = add(loss, scale(smoothed_cross_entropy(aux, b.labels, o.label_smoothing),
                               o.auxiliary_weight));
      }
      const double l = loss.item();
      TNAS_CHECK(std::isfinite(l), "train::fit: the training loss became ", l, " at epoch ",
                 epoch + 1, ", step ", st.step + 1, " (lower the learning rate?)");
      backward(loss);
      if (darts) darts->clear_aux_logits();
      if (o.grad_clip > 0) {
        const double norm = optim::clip_grad_norm(params, o.grad_clip);
        TNAS_CHECK(std::isfinite(norm), "train::fit: the gradient norm became ", norm, " at epoch ",
                   epoch + 1, ", step ", st.step + 1);
      }
      opt.step();
      const auto pred = argmax_rows(logits);
      for (size_t i = 0; i < pred.size(); ++i) st.correct += pred[i] == b.labels[i];
      st.loss_sum += l * double(b.size());
      st.count += b.size();
      st.position = loader.position();
      ++st.step;
      ++res.steps;
      char buf[64];
      std::snprintf(buf, sizeof buf, "loss %.4f acc %.4f", st.loss_sum / double(st.count),
                    double(st.correct) / double(st.count));
      prog.update(st.step, buf);
    }
    if (st.count > 0) {
      res.train_loss = st.loss_sum / double(st.count);
      res.train_acc = double(st.correct) / double(st.count);
    }
    if (stopped) break;  // mid-epoch: checkpointed below, not a history entry

    FitEpoch r;
    r.epoch = epoch + 1;
    r.lr = opt.lr();
    r.train_loss = res.train_loss;
    r.train_acc = res.train_acc;
    r.steps = st.step;
    r.drop_path_prob = darts ? darts->drop_path_prob() : 0.0;
    const bool eval_due = (o.eval_every > 0 && (epoch + 1) % o.eval_every == 0) ||
                          epoch + 1 == o.epochs || epoch + 1 == last_epoch;
    if (eval_due) evaluate_now(r.eval_loss, r.eval_acc);
    r.seconds = elapsed();
    st.history.push_back(r);
    st = detail::FitState{.epoch = epoch + 1, .seconds = r.seconds, .history = st.history};
    if (o.verbose)
      std::fprintf(stderr,
                   "train epoch %d/%d: lr %.5f | train loss %.4f acc %.4f | eval loss %.4f acc "
                   "%.4f | %.1fs\n",
                   r.epoch, o.epochs, r.lr, r.train_loss, r.train_acc, r.eval_loss, r.eval_acc,
                   r.seconds);
    if (!csv.empty()) {
      std::ofstream f(csv, std::ios::app);
      detail::write_csv_row(f, r);
    }
    save();
  }
  if (stopped) {
    save();
    if (o.verbose)
      std::fprintf(stderr, "train: stopped at epoch %d, step %lld (%s) after %.1fs\n", st.epoch + 1,
                   (long long)st.step, res.stopped_by_budget ? "time budget" : "max_steps",
                   elapsed());
  }

  res.history = st.history;
  res.epochs_done = res.history.empty() ? 0 : res.history.back().epoch;
  if (!res.history.empty() && std::isnan(res.train_loss)) {
    res.train_loss = res.history.back().train_loss;
    res.train_acc = res.history.back().train_acc;
  }
  // The final model's evaluation: the last epoch's, when no step has changed the model since.
  const bool last_is_current = !stopped || st.step == 0;
  if (last_is_current && !res.history.empty() && !std::isnan(res.history.back().eval_acc)) {
    res.eval_loss = res.history.back().eval_loss;
    res.eval_acc = res.history.back().eval_acc;
  } else {
    evaluate_now(res.eval_loss, res.eval_acc);
  }
  for (auto& r : res.history)
    if (!std::isnan(r.eval_acc) && (res.best_epoch == 0 || r.eval_acc > res.best_eval_acc)) {
      res.best_eval_acc = r.eval_acc;
      res.best_epoch = r.epoch;
    }
  res.seconds = elapsed();
  return res;
}

}  // namespace tnas::train
