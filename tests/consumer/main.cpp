// Links tnas::tnas from an installed package and takes one gradient.
#include <tnas/tnas.hpp>

#include <cstdio>

int main() {
  using namespace tnas;
  Rng rng(1);
  Tensor w = Tensor::randn({3, 4}, rng).set_requires_grad();
  Tensor x = Tensor::randn({2, 4}, rng);
  std::vector<int32_t> y{0, 2};
  Tensor loss = cross_entropy(linear(x, w), y);
  backward(loss);
  std::printf("consumer: loss %.4f, |grad| defined: %d\n", loss.item(), w.grad().defined());
  return w.grad().defined() && w.grad().shape() == w.shape() ? 0 : 1;
}
