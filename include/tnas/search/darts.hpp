// DARTS: differentiable architecture search (Liu, Simonyan & Yang, ICLR 2019), with the
// variants of the weight-sharing literature that only change its loop: one-level optimisation,
// warm-up with frozen alpha, and a time budget.
//
// represents: the bi-level search of a Supernet's weights w (SGD with momentum and a cosine
//   schedule, gradient clipping) and architecture alpha (Adam), on the two halves of a
//   training set: w on the "train" half, alpha on the "valid" half.
// First order: alpha's gradient is dL_val(w, alpha)/dalpha at the current w.
// Second order: the gradient of the unrolled objective L_val(w', alpha) with
//   w' = w - eta * (momentum * v + dL_train/dw + wd * w), i.e.
//   dL_val(w', a)/da - eta * d2L_train(w, a)/(da dw) . dL_val(w', a)/dw', the Hessian-vector
//   product taken by central differences at w +- R v', R = r / |v'| (the paper's eq. 7-8).
// Per epoch: the mixing weights, the derived genotype and its count of parameter-free ops go to
//   the log, so a collapse to skip connections is seen while it happens; a checkpoint holds
//   everything a resumed run needs to continue exactly.
#pragma once

#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "tnas/core/graph.hpp"
#include "tnas/data/loader.hpp"
#include "tnas/io/archive.hpp"
#include "tnas/optim/adam.hpp"
#include "tnas/optim/clip.hpp"
#include "tnas/optim/schedule.hpp"
#include "tnas/optim/sgd.hpp"
#include "tnas/search/supernet.hpp"
#include "tnas/train/evaluate.hpp"

namespace tnas::search {

struct DartsOptions {
  bool second_order = false;
  bool one_level = false;  // alpha and w both step on the train batch (one-level DARTS)
  int epochs = 50;
  int64_t batch = 64;
  double w_lr = 0.025, w_lr_min = 0.001, w_momentum = 0.9, w_wd = 3e-4, grad_clip = 5.0;
  double a_lr = 3e-4, a_beta1 = 0.5, a_beta2 = 0.999, a_wd = 1e-3;
  int warmup_epochs = 0;           // alpha is frozen during the first epochs (weights warm up)
  double unroll_r = 0.01;          // R = unroll_r / |dL_val/dw'| for the Hessian-vector product
  double budget_seconds = 0;       // stop once the search has run this long (0: no limit)
  int64_t steps_per_epoch = 0;     // cap on steps per epoch (0: the whole train half)
  int64_t valid_eval_samples = 0;  // supernet validation accuracy on this many (0: all)
  std::filesystem::path out_dir;   // logs and checkpoint; empty: none written
  bool resume = false;             // continue from out_dir/search.ckpt when it exists
  int epochs_this_run = 0;         // stop after this many epochs in this call (0: run to the end)
  bool verbose = true;
  uint64_t seed = 2;
  // On a device (CUDA): capture the search step as a device graph after one eager step, and
  // replay it (first-order and one-level DARTS; the second-order step reads a norm back).
  bool device_graph = false;
};

struct EpochRecord {
  int epoch = 0;
  double train_loss = 0, train_acc = 0;
  double supernet_valid_acc = 0;  // accuracy of the weight-sharing supernet on the valid half
  double lr = 0, seconds = 0;
  std::string genotype;
  int param_free_ops = 0;
};

template <class Genotype>
struct SearchResult {
  Genotype genotype;
  std::vector<EpochRecord> history;
  double seconds = 0;
  bool stopped_by_budget = false;
  int epochs_done = 0;
};

namespace detail {
inline nlohmann::json to_json(const EpochRecord& r) {
  return {{"epoch", r.epoch},
          {"train_loss", r.train_loss},
          {"train_acc", r.train_acc},
          {"supernet_valid_acc", r.supernet_valid_acc},
          {"lr", r.lr},
          {"seconds", r.seconds},
          {"genotype", r.genotype},
          {"param_free_ops", r.param_free_ops}};
}
inline EpochRecord record_from_json(const nlohmann::json& j) {
  EpochRecord r;
  r.epoch = j.at("epoch");
  r.train_loss = j.at("train_loss");
  r.train_acc = j.at("train_acc");
  r.supernet_valid_acc = j.at("supernet_valid_acc");
  r.lr = j.at("lr");
  r.seconds = j.at("seconds");
  r.genotype = j.at("genotype");
  r.param_free_ops = j.at("param_free_ops");
  return r;
}
// a += s * b over parameter lists (no autograd), on the tensors' device.
inline void axpy(const std::vector<Tensor>& a, double s, const std::vector<Tensor>& b) {
  for (size_t i = 0; i < a.size(); ++i) {
    if (!b[i].defined()) continue;
    if (a[i].device() != Device::cpu) {
      NoGrad ng;
      a[i].copy_(add(a[i], scale(b[i], s)));
      continue;
    }
    dispatch(a[i].dtype(), [&]<class T>() {
      T* pa = a[i].data<T>();
      const T* pb = b[i].data<T>();
      for (int64_t k = 0; k < a[i].numel(); ++k) pa[k] += T(s) * pb[k];
    });
  }
}
inline std::vector<Tensor> grads_of(const std::vector<Tensor>& ps) {
  std::vector<Tensor> g;
  for (auto& p : ps) g.push_back(p.grad().defined() ? p.grad().clone() : Tensor());
  return g;
}
inline std::vector<Tensor> clones(const std::vector<Tensor>& ps) {
  std::vector<Tensor> c;
  for (auto& p : ps) c.push_back(p.clone());
  return c;
}
inline void assign(const std::vector<Tensor>& dst, const std::vector<Tensor>& src) {
  for (size_t i = 0; i < dst.size(); ++i) dst[i].copy_(src[i]);
}
inline double norm(const std::vector<Tensor>& ts) {
  double s = 0;
  for (auto& t : ts)
    if (t.defined())
      for (double v : t.to_vector()) s += v * v;
  return std::sqrt(s);
}
}  // namespace detail

template <class Net>
class Darts {
 public:
  using Genotype = decltype(std::declval<const Net&>().genotype());

  Darts(Net& net, DartsOptions o)
      : net_(net),
        o_(std::move(o)),
        w_(net.parameters()),
        a_(net.arch_parameters()),
        wopt_(w_,
              optim::SGDOptions{.lr = o_.w_lr, .momentum = o_.w_momentum, .weight_decay = o_.w_wd}),
        aopt_(
            a_,
            optim::AdamOptions{
                .lr = o_.a_lr, .beta1 = o_.a_beta1, .beta2 = o_.a_beta2, .weight_decay = o_.a_wd}),
        sched_(wopt_, o_.epochs, o_.w_lr_min) {
    TNAS_CHECK(o_.epochs >= 1 && o_.batch >= 1, "Darts: epochs and batch must be >= 1");
    TNAS_CHECK(!(o_.device_graph && o_.second_order), "Darts: device_graph replays first-order ",
               "or one-level steps; the second-order step reads a gradient norm back to the host");
  }

  // Where the search runs: the device of the supernet's weights (move the net with
  // net.to(Device::cuda) before constructing Darts). Batches are moved there as they come.
  Device device() const { return w_[0].device(); }

  // The training loss of one batch, with the tape on.
  Tensor loss(const data::Batch& b) {
    return cross_entropy(net_.forward(b.x.to(device())), b.labels);
  }

  // One search step: alpha on the valid batch (unless frozen), then w on the train batch.
  // Returns the train batch's loss and accuracy.
  std::pair<double, double> step(const data::Batch& train, const data::Batch& valid,
                                 bool update_alpha) {
    if (o_.device_graph && device() != Device::cpu) {
      if (eager_done_[update_alpha]) return graph_step(train, valid, update_alpha);
      eager_done_[update_alpha] = true;  // one eager step first: optimizer buffers, handles
    }
    if (update_alpha) {
      if (o_.one_level) {
        // alpha's update is folded into the weight step below.
      } else if (o_.second_order) {
        unrolled_alpha_grad(train, valid);
        aopt_.step();
      } else {
        zero_all();
        backward(loss(valid));
        aopt_.step();
      }
    }
    zero_all();
    Tensor logits = net_.forward(train.x.to(device()));
    Tensor l = cross_entropy(logits, train.labels);
    backward(l);
    // On a device the norm stays there: the step enqueues its work without waiting for it.
    if (device() == Device::cpu)
      optim::clip_grad_norm(w_, o_.grad_clip);
    else
      optim::clip_grad_norm_async(w_, o_.grad_clip);
    wopt_.step();
    if (update_alpha && o_.one_level) aopt_.step();
    return loss_and_accuracy(l, logits, train.labels);
  }

  // Sets alpha's gradients to DARTS' second-order approximation (the paper's eq. 7-8).
  void unrolled_alpha_grad(const data::Batch& train, const data::Batch& valid) {
    const double eta = wopt_.lr();
    const std::vector<Tensor> w0 = detail::clones(w_);
    // w' = w - eta * (momentum * v + g + wd * w)
    zero_all();
    backward(loss(train));
    std::vector<Tensor> step = detail::grads_of(w_);
    for (size_t i = 0; i < w_.size(); ++i) {
      if (!step[i].defined()) step[i] = Tensor::zeros(w_[i].shape(), w_[i].dtype(), w_[i].device());
      detail::axpy({step[i]}, o_.w_wd, {w0[i]});
      const Tensor& v = wopt_.param_state(i).buf[0];
      if (v.defined()) detail::axpy({step[i]}, o_.w_momentum, {v});
    }
    detail::axpy(w_, -eta, step);
    // dL_val(w', a)/da and dL_val(w', a)/dw'
    zero_all();
    backward(loss(valid));
    std::vector<Tensor> da = detail::grads_of(a_);
    std::vector<Tensor> dw = detail::grads_of(w_);
    // Hessian-vector product by central differences around w.
    const double R = o_.unroll_r / std::max(detail::norm(dw), 1e-12);
    detail::assign(w_, w0);
    detail::axpy(w_, R, dw);
    zero_all();
    backward(loss(train));
    std::vector<Tensor> gp = detail::grads_of(a_);
    detail::assign(w_, w0);
    detail::axpy(w_, -R, dw);
    zero_all();
    backward(loss(train));
    std::vector<Tensor> gn = detail::grads_of(a_);
    detail::assign(w_, w0);
    zero_all();
    for (size_t i = 0; i < a_.size(); ++i) {
      Tensor g =
          da[i].defined() ? da[i] : Tensor::zeros(a_[i].shape(), a_[i].dtype(), a_[i].device());
      if (gp[i].defined()) detail::axpy({g}, -eta / (2 * R), {gp[i]});
      if (gn[i].defined()) detail::axpy({g}, eta / (2 * R), {gn[i]});
      a_[i].set_grad(g);
    }
  }

  SearchResult<Genotype> run(const data::Dataset& train_half, const data::Dataset& valid_half) {
    SearchResult<Genotype> res;
    int start_epoch = 0;
    double elapsed_before = 0;
    const auto ckpt = o_.out_dir.empty() ? std::filesystem::path() : o_.out_dir / "search.ckpt";
    if (!o_.out_dir.empty()) std::filesystem::create_directories(o_.out_dir);
    if (o_.resume && !ckpt.empty() && std::filesystem::exists(ckpt)) {
      start_epoch = load_checkpoint(ckpt, res.history, elapsed_before);
      if (o_.verbose)
        std::fprintf(stderr, "darts: resumed from %s at epoch %d\n", ckpt.string().c_str(),
                     start_epoch);
    } else if (!o_.out_dir.empty()) {
      std::ofstream(o_.out_dir / "search_log.csv")
          << "epoch,train_loss,train_acc,supernet_valid_acc,lr,param_free_ops,seconds,genotype\n";
      std::ofstream(o_.out_dir / "alphas.jsonl", std::ios::trunc);
    }
    data::DataLoader tl(
        train_half, {.batch_size = o_.batch, .shuffle = true, .drop_last = true, .seed = o_.seed});
    data::DataLoader vl(
        valid_half,
        {.batch_size = o_.batch, .shuffle = true, .drop_last = true, .seed = o_.seed + 1});
    const double t0 = train::Progress::now() - elapsed_before;
    int64_t per_epoch = std::min(tl.batches_per_epoch(), vl.batches_per_epoch());
    if (o_.steps_per_epoch > 0) per_epoch = std::min(per_epoch, o_.steps_per_epoch);
    TNAS_CHECK(per_epoch >= 1, "Darts: the data halves (", train_half.size(), " and ",
               valid_half.size(), " samples) hold no full batch of ", o_.batch);
    net_.train();
    int epoch = start_epoch;
    const int last =
        o_.epochs_this_run > 0 ? std::min(o_.epochs, start_epoch + o_.epochs_this_run) : o_.epochs;
    for (; epoch < last && !res.stopped_by_budget; ++epoch) {
      sched_.set_t(epoch);
      tl.seek(epoch);
      vl.seek(epoch);
      const bool update_alpha = epoch >= o_.warmup_epochs;
      train::Progress prog(
          "darts epoch " + std::to_string(epoch + 1) + "/" + std::to_string(o_.epochs), per_epoch,
          o_.verbose);
      data::Batch bt, bv;
      double loss_sum = 0, acc_sum = 0;
      int64_t steps = 0;
      for (; steps < per_epoch; ++steps) {
        if (o_.budget_seconds > 0 && train::Progress::now() - t0 > o_.budget_seconds) {
          res.stopped_by_budget = true;
          break;
        }
        tl.next(bt);
        vl.next(bv);
        auto [l, a] = step(bt, bv, update_alpha);
        TNAS_CHECK(std::isfinite(l), "Darts: the training loss became ", l, " at epoch ", epoch + 1,
                   ", step ", steps + 1, " (lower the learning rate?)");
        loss_sum += l;
        acc_sum += a;
        char buf[64];
        std::snprintf(buf, sizeof buf, "loss %.3f acc %.3f", loss_sum / double(steps + 1),
                      acc_sum / double(steps + 1));
        prog.update(steps + 1, buf);
      }
      if (steps == 0) break;
      EpochRecord r;
      r.epoch = epoch + 1;
      r.train_loss = loss_sum / double(steps);
      r.train_acc = acc_sum / double(steps);
      r.lr = wopt_.lr();
      r.supernet_valid_acc = train::evaluate(net_, valid_half, 256, o_.valid_eval_samples).accuracy;
      net_.train();
      Genotype g = net_.genotype();
      r.genotype = g.str();
      r.param_free_ops = g.parameter_free_ops();
      r.seconds = train::Progress::now() - t0;
      res.history.push_back(r);
      if (o_.verbose)
        std::fprintf(stderr,
                     "darts epoch %d: train loss %.4f acc %.4f | supernet valid acc %.4f | "
                     "param-free ops %d | %s\n",
                     r.epoch, r.train_loss, r.train_acc, r.supernet_valid_acc, r.param_free_ops,
                     r.genotype.c_str());
      if (!o_.out_dir.empty()) {
        log_epoch(r);
        if (steps == per_epoch) save_checkpoint(ckpt, epoch + 1, res.history, r.seconds);
      }
    }
    res.epochs_done = res.history.empty() ? 0 : res.history.back().epoch;
    res.genotype = net_.genotype();
    res.seconds = train::Progress::now() - t0;
    return res;
  }

  // The step as device work recorded once and replayed: the batches are copied into tensors
  // that the graph reads, the optimizers' per-step values staged, the graph replayed, and the
  // loss and logits read from the tensors the capture made.
  std::pair<double, double> graph_step(const data::Batch& train, const data::Batch& valid,
                                       bool update_alpha) {
    StepGraph& G = graphs_[update_alpha];
    const bool new_train = stage(G.xt, G.yt, train);
    const bool new_valid = stage(G.xv, G.yv, valid);
    if (new_train || new_valid || !G.graph) {
      graphs_[!update_alpha].graph.reset();  // warm-up's graph is not needed again: free it
      G.graph = std::make_unique<DeviceGraph>(device());
      G.graph->capture([&] {
        if (update_alpha && !o_.one_level) {
          zero_all();
          backward(cross_entropy(net_.forward(G.xv), G.yv));
          aopt_.capture_step();
        }
        zero_all();
        G.logits = net_.forward(G.xt);
        G.loss = cross_entropy(G.logits, G.yt);
        backward(G.loss);
        optim::clip_grad_norm_async(w_, o_.grad_clip);
        wopt_.capture_step();
        if (update_alpha && o_.one_level) aopt_.capture_step();
      });
    }
    if (update_alpha) aopt_.stage_replay();
    wopt_.stage_replay();
    G.graph->replay();
    return loss_and_accuracy(G.loss, G.logits, train.labels);
  }

  optim::SGD& weight_optimizer() { return wopt_; }
  optim::Adam& arch_optimizer() { return aopt_; }

 private:
  void zero_all() {
    wopt_.zero_grad();
    aopt_.zero_grad();
  }

  void log_epoch(const EpochRecord& r) {
    std::ofstream csv(o_.out_dir / "search_log.csv", std::ios::app);
    csv << r.epoch << ',' << r.train_loss << ',' << r.train_acc << ',' << r.supernet_valid_acc
        << ',' << r.lr << ',' << r.param_free_ops << ',' << r.seconds << ",\"" << r.genotype
        << "\"\n";
    nlohmann::json j = detail::to_json(r);
    nlohmann::json alphas = nlohmann::json::array();
    for (const Tensor& a : a_) {
      NoGrad ng;
      Tensor w = mixing_weights(a, net_.mixing()).cpu();
      nlohmann::json rows = nlohmann::json::array();
      for (int64_t e = 0; e < w.dim(0); ++e) {
        std::vector<double> row;
        for (int64_t k = 0; k < w.dim(1); ++k) row.push_back(w.at({e, k}));
        rows.push_back(row);
      }
      alphas.push_back(rows);
    }
    j["weights"] = alphas;
    std::ofstream(o_.out_dir / "alphas.jsonl", std::ios::app) << j.dump() << '\n';
  }

  void save_checkpoint(const std::filesystem::path& path, int epochs_done,
                       const std::vector<EpochRecord>& hist, double seconds) {
    io::Archive a;
    for (auto& [k, t] : net_.state_dict()) a.tensors.emplace_back("model." + k, t);
    for (size_t i = 0; i < a_.size(); ++i)
      a.tensors.emplace_back("alpha." + std::to_string(i), a_[i]);
    a.add("wopt.", wopt_.state());
    a.add("aopt.", aopt_.state());
    nlohmann::json h = nlohmann::json::array();
    for (auto& r : hist) h.push_back(detail::to_json(r));
    a.meta["darts.epochs_done"] = std::to_string(epochs_done);
    a.meta["darts.history"] = h.dump();
    a.meta["darts.seconds"] = optim::detail::encode(seconds);
    a.meta["darts.seed"] = std::to_string(o_.seed);
    a.meta["darts.second_order"] = o_.second_order ? "1" : "0";
    io::write(path, a);
  }

  int load_checkpoint(const std::filesystem::path& path, std::vector<EpochRecord>& hist,
                      double& seconds) {
    io::Archive a = io::read(path);
    TNAS_CHECK(a.meta_at("darts.seed") == std::to_string(o_.seed), "Darts: checkpoint '",
               path.string(), "' was made with seed ", a.meta_at("darts.seed"), ", this run has ",
               o_.seed);
    net_.load_state_dict(a.extract("model.").tensors);
    for (size_t i = 0; i < a_.size(); ++i) a_[i].copy_(a.tensor("alpha." + std::to_string(i)));
    wopt_.load_state(a.extract("wopt."));
    aopt_.load_state(a.extract("aopt."));
    hist.clear();
    for (auto& j : nlohmann::json::parse(a.meta_at("darts.history")))
      hist.push_back(detail::record_from_json(j));
    seconds = optim::detail::decode(a.meta_at("darts.seconds"), "darts.seconds");
    return std::stoi(a.meta_at("darts.epochs_done"));
  }

  // A step's result: its loss, and the share of rows whose largest logit is the label.
  static std::pair<double, double> loss_and_accuracy(const Tensor& loss, const Tensor& logits,
                                                     const std::vector<int32_t>& labels) {
    const auto pred = argmax_rows(logits);
    int64_t correct = 0;
    for (size_t i = 0; i < pred.size(); ++i) correct += pred[i] == labels[i];
    return {loss.item(), double(correct) / double(pred.size())};
  }

  // Copies a batch into the device tensors a graph reads (labels as float class indices);
  // true when they had to be made (first use, or a new batch shape): the graph is then stale.
  bool stage(Tensor& x, Tensor& y, const data::Batch& b) {
    const Tensor lab = label_tensor(b.labels);
    const bool make = !x.defined() || x.shape() != b.x.shape() || y.shape() != lab.shape();
    if (make) {
      x = Tensor::empty(b.x.shape(), b.x.dtype(), device());
      y = Tensor::empty(lab.shape(), DType::f32, device());
    }
    x.copy_(b.x);
    y.copy_(lab);
    return make;
  }
  struct StepGraph {
    std::unique_ptr<DeviceGraph> graph;
    Tensor xt, yt, xv, yv, logits, loss;
  };

  Net& net_;
  DartsOptions o_;
  std::vector<Tensor> w_, a_;
  optim::SGD wopt_;
  optim::Adam aopt_;
  optim::CosineAnnealingLR sched_;
  StepGraph graphs_[2];  // by update_alpha
  bool eager_done_[2] = {false, false};
};

}  // namespace tnas::search
