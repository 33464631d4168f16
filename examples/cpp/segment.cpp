// segment: run a segzoo model exported with `segzoo export MODEL --format aoti` on an image.
//
//   segment MODEL.pt2 IMAGE MASK.png [OVERLAY.png]
//
// Reads the image with stb_image, preprocesses it as the package's metadata says (shorter side
// resized to `resize` with antialiased bilinear interpolation, scaled to [0, 1], normalised with
// `mean` / `std`), runs the AOTInductor package, resizes the logits back to the image and writes
// the class index of every pixel as an 8-bit grayscale PNG (pixel value = class), plus an overlay
// of the image with a colour per class.
#include <torch/torch.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

#include <nlohmann/json.hpp>

#define STB_IMAGE_IMPLEMENTATION
#include <stb/stb_image.h>
#define STB_IMAGE_WRITE_IMPLEMENTATION
#include <stb/stb_image_write.h>

#include <cmath>
#include <cstdint>
#include <iostream>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace F = torch::nn::functional;
using json = nlohmann::json;

namespace {

struct Preprocessing {
  int64_t resize = 0;  // shorter side; 0 keeps the image's size
  std::vector<double> mean, std;
  int64_t multiple = 1, min_size = 1;
  std::vector<int64_t> static_size;  // {H, W} for a package exported for one size
  std::vector<std::string> labels;
};

Preprocessing read_metadata(torch::inductor::AOTIModelPackageLoader& loader) {
  auto metadata = loader.get_metadata();
  auto it = metadata.find("segzoo");
  if (it == metadata.end())
    throw std::runtime_error("the package has no 'segzoo' metadata: export it with `segzoo export`");
  json meta = json::parse(it->second);
  Preprocessing p;
  const json& pre = meta.at("preprocessing");
  if (!pre.at("resize").is_null()) p.resize = pre.at("resize").get<int64_t>();
  p.mean = pre.at("mean").get<std::vector<double>>();
  p.std = pre.at("std").get<std::vector<double>>();
  if (pre.value("interpolation", "bilinear") != "bilinear")
    throw std::runtime_error("only bilinear resizing is implemented here");
  const json& size = meta.at("size");
  p.multiple = size.at("multiple").get<int64_t>();
  p.min_size = size.at("min").get<int64_t>();
  if (!size.at("static").is_null()) p.static_size = size.at("static").get<std::vector<int64_t>>();
  if (meta.contains("labels") && meta.at("labels").is_array())
    p.labels = meta.at("labels").get<std::vector<std::string>>();
  return p;
}

// The image as a 1 x 3 x H x W uint8 tensor (grayscale and alpha converted to RGB by stb).
torch::Tensor read_image(const std::string& path) {
  int w = 0, h = 0, channels = 0;
  std::unique_ptr<stbi_uc, void (*)(void*)> pixels(stbi_load(path.c_str(), &w, &h, &channels, 3), stbi_image_free);
  if (!pixels) throw std::runtime_error("cannot read image " + path + ": " + stbi_failure_reason());
  return torch::from_blob(pixels.get(), {h, w, 3}, torch::kUInt8).permute({2, 0, 1}).unsqueeze(0).clone();
}

// torchvision's Resize(size) on an image tensor: shorter side to `size`, the longer one scaled
// and truncated, antialiased bilinear on uint8 (the same ATen kernel segzoo predict runs).
torch::Tensor resize_shorter(const torch::Tensor& image, int64_t size) {
  int64_t h = image.size(2), w = image.size(3);
  int64_t short_side = std::min(h, w), long_side = std::max(h, w);
  int64_t new_long = static_cast<int64_t>(static_cast<double>(size * long_side) / static_cast<double>(short_side));
  int64_t new_h = h <= w ? size : new_long, new_w = h <= w ? new_long : size;
  if (new_h == h && new_w == w) return image;
  return F::interpolate(image, F::InterpolateFuncOptions()
                                   .size(std::vector<int64_t>{new_h, new_w})
                                   .mode(torch::kBilinear)
                                   .align_corners(false)
                                   .antialias(true));
}

int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

// VOC's colour map: class bits spread over the high bits of R, G and B.
std::vector<uint8_t> palette_colour(int64_t cls) {
  uint8_t c[3] = {0, 0, 0};
  for (int shift = 7; shift >= 0 && cls > 0; --shift, cls >>= 3)
    for (int k = 0; k < 3; ++k) c[k] |= ((cls >> k) & 1) << shift;
  return {c[0], c[1], c[2]};
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4 || argc > 5) {
    std::cerr << "usage: " << argv[0] << " MODEL.pt2 IMAGE MASK.png [OVERLAY.png]\n";
    return 2;
  }
  try {
    torch::NoGradGuard no_grad;
    torch::inductor::AOTIModelPackageLoader loader(argv[1]);
    Preprocessing pre = read_metadata(loader);

    torch::Tensor raw = read_image(argv[2]);
    const int64_t height = raw.size(2), width = raw.size(3);
    torch::Tensor resized;
    if (!pre.static_size.empty()) {
      resized = F::interpolate(raw, F::InterpolateFuncOptions()
                                        .size(pre.static_size)
                                        .mode(torch::kBilinear)
                                        .align_corners(false)
                                        .antialias(true));
    } else {
      resized = pre.resize > 0 ? resize_shorter(raw, pre.resize) : raw;
    }
    torch::Tensor x = resized.to(torch::kFloat32).mul_(1.0 / 255.0);
    x.sub_(torch::tensor(pre.mean, torch::kFloat32).view({1, 3, 1, 1}))
        .div_(torch::tensor(pre.std, torch::kFloat32).view({1, 3, 1, 1}));
    // Pad at the bottom and right (with zeros, as segzoo pads batches) up to a size the model accepts.
    const int64_t h = x.size(2), w = x.size(3);
    const int64_t ph = std::max(round_up(h, pre.multiple), round_up(pre.min_size, pre.multiple));
    const int64_t pw = std::max(round_up(w, pre.multiple), round_up(pre.min_size, pre.multiple));
    if (pre.static_size.empty() && (ph != h || pw != w)) x = F::pad(x, F::PadFuncOptions({0, pw - w, 0, ph - h}));

    std::vector<torch::Tensor> outputs = loader.run({x.contiguous()});
    torch::Tensor logits = outputs.at(0).slice(2, 0, h).slice(3, 0, w);
    if (logits.size(2) != height || logits.size(3) != width)
      logits = F::interpolate(logits, F::InterpolateFuncOptions()
                                          .size(std::vector<int64_t>{height, width})
                                          .mode(torch::kBilinear)
                                          .align_corners(false));
    torch::Tensor mask = logits[0].argmax(0).to(torch::kUInt8).contiguous();
    if (logits.size(1) > 256) throw std::runtime_error("more than 256 classes do not fit an 8-bit PNG");
    if (!stbi_write_png(argv[3], static_cast<int>(width), static_cast<int>(height), 1, mask.data_ptr<uint8_t>(),
                        static_cast<int>(width)))
      throw std::runtime_error(std::string("cannot write ") + argv[3]);

    torch::Tensor counts = torch::bincount(mask.flatten().to(torch::kLong), {}, logits.size(1));
    std::cout << "wrote " << argv[3] << " (" << height << " x " << width << "); classes:";
    for (int64_t c = 0; c < counts.size(0); ++c) {
      int64_t n = counts[c].item<int64_t>();
      if (n == 0) continue;
      std::string name = c < static_cast<int64_t>(pre.labels.size()) ? pre.labels[c] : "class_" + std::to_string(c);
      std::cout << " " << name << " " << n;
    }
    std::cout << "\n";

    if (argc == 5) {  // the image blended half and half with the class colours
      torch::Tensor image = raw[0].permute({1, 2, 0}).contiguous();
      std::vector<uint8_t> blended(height * width * 3);
      const uint8_t* px = image.data_ptr<uint8_t>();
      const uint8_t* m = mask.data_ptr<uint8_t>();
      std::vector<std::vector<uint8_t>> colours;
      for (int64_t c = 0; c < logits.size(1); ++c) colours.push_back(palette_colour(c));
      for (int64_t i = 0; i < height * width; ++i)
        for (int k = 0; k < 3; ++k)
          blended[i * 3 + k] = static_cast<uint8_t>((px[i * 3 + k] + colours[m[i]][k] + 1) / 2);
      if (!stbi_write_png(argv[4], static_cast<int>(width), static_cast<int>(height), 3, blended.data(),
                          static_cast<int>(width * 3)))
        throw std::runtime_error(std::string("cannot write ") + argv[4]);
      std::cout << "wrote " << argv[4] << "\n";
    }
  } catch (const std::exception& e) {
    std::cerr << "segment: error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
