"""The ONNX Runtime and Pillow peer of bench/vision: makes a random-weight image tower folder
with the real config (transformers' CLIPVisionModelWithProjection or SiglipVisionModel, seeded;
no trained CLIP or SigLIP ships in a PyPI wheel), exports it to ONNX (torch's legacy exporter,
opset 17; ORT's dynamic int8 beside it), and times, with THREADS intra-op threads, images/s at
a batch of 8 and one image's p50 on the same pixels the engine gets, and the Pillow-backed
processor (transformers' CLIPImageProcessorPil / SiglipImageProcessorPil) on the photograph.

    python bench/vision_peer.py make FAMILY DIR          # clip-b32, clip-b16, siglip-224, siglip2-256
    python bench/vision_peer.py run DIR PHOTO THREADS     # prints one JSON object
"""

import json
import os
import sys
import time

import numpy as np

CONFIGS = {
    "clip-b32": ("clip", 224, 32),
    "clip-b16": ("clip", 224, 16),
    "siglip-224": ("siglip", 224, 16),
    "siglip2-256": ("siglip", 256, 16),
}


def make(family, out):
    import torch
    from transformers import (CLIPConfig, CLIPVisionConfig, CLIPVisionModelWithProjection,
                              SiglipConfig, SiglipVisionConfig, SiglipVisionModel)

    kind, size, patch = CONFIGS[family]
    torch.manual_seed(0)
    os.makedirs(out, exist_ok=True)
    if kind == "clip":
        vc = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                  num_attention_heads=12, image_size=size, patch_size=patch,
                  hidden_act="quick_gelu", layer_norm_eps=1e-5)
        model = CLIPVisionModelWithProjection(CLIPVisionConfig(projection_dim=512, **vc))
        CLIPConfig(vision_config=vc, projection_dim=512).to_json_file(f"{out}/config.json")
        processor = {"crop_size": {"height": size, "width": size}, "do_center_crop": True,
                     "image_mean": [0.48145466, 0.4578275, 0.40821073],
                     "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3,
                     "rescale_factor": 1 / 255, "size": {"shortest_edge": size},
                     "image_processor_type": "CLIPImageProcessor"}
    else:
        vc = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                  num_attention_heads=12, image_size=size, patch_size=patch,
                  hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)
        model = SiglipVisionModel(SiglipVisionConfig(**vc))
        SiglipConfig(vision_config=vc).to_json_file(f"{out}/config.json")
        processor = {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "resample": 2,
                     "rescale_factor": 1 / 255, "size": {"height": size, "width": size},
                     "image_processor_type": "SiglipImageProcessor"}
    # transformers initialises LayerNorms to 1 and 0: perturb them as training would.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    model.eval()
    from safetensors.torch import save_file
    # Under the names a whole CLIPModel's or SiglipModel's checkpoint gives the tower
    # (transformers 5 saves a bare SiglipVisionModel without the prefix).
    state = {k if k.startswith(("vision_model.", "visual_projection.")) else f"vision_model.{k}":
             v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, f"{out}/model.safetensors")
    with open(f"{out}/preprocessor_config.json", "w") as f:
        json.dump(processor, f, indent=1)

    class Tower(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, pixel_values):
            out = self.model(pixel_values=pixel_values)
            return out.image_embeds if kind == "clip" else out.pooler_output

    pixels = torch.randn(2, 3, size, size)
    with torch.no_grad():
        torch.onnx.export(Tower().eval(), (pixels,), f"{out}/model.onnx", dynamo=False,
                          input_names=["pixel_values"], output_names=["vector"],
                          dynamic_axes={"pixel_values": {0: "batch"}, "vector": {0: "batch"}},
                          opset_version=17, do_constant_folding=True)
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    quantize_dynamic(f"{out}/model.onnx", f"{out}/model.int8.onnx", weight_type=QuantType.QInt8,
                     per_channel=True, extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    print(f"made {out}")


def timed(f, seconds=3.0, least=3):
    f()
    times = []
    until = time.perf_counter() + seconds
    while time.perf_counter() < until or len(times) < least:
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def run(folder, photo, threads):
    from PIL import Image
    from transformers import CLIPImageProcessorPil, SiglipImageProcessorPil

    with open(f"{folder}/preprocessor_config.json") as f:
        pc = json.load(f)
    cls = CLIPImageProcessorPil if pc["image_processor_type"] == "CLIPImageProcessor" else SiglipImageProcessorPil
    proc = cls.from_dict(pc)
    pre = timed(lambda: proc(images=Image.open(photo).convert("RGB"), return_tensors="np"), 1.0, 10)
    pixels = proc(images=Image.open(photo).convert("RGB"), return_tensors="np")["pixel_values"]
    out = {"threads": threads, "pillow_preprocess_p50_ms": pre * 1e3}
    from peer_common import open_session
    for graph in ["model.onnx", "model.int8.onnx"]:
        sess, _ = open_session(folder, graph != "model.onnx", threads)
        batch = np.repeat(pixels, 8, axis=0).astype(np.float32)
        one = pixels.astype(np.float32)
        b = timed(lambda: sess.run(None, {"pixel_values": batch}))
        s = timed(lambda: sess.run(None, {"pixel_values": one}))
        key = "ort_f32" if graph == "model.onnx" else "ort_int8"
        out[key] = {"batch8_images_per_s": 8 / b, "one_image_p50_ms": s * 1e3,
                    "vector": sess.run(None, {"pixel_values": one})[0][0].tolist()}
    print(json.dumps(out))


if sys.argv[1] == "make":
    make(sys.argv[2], sys.argv[3])
else:
    run(sys.argv[2], sys.argv[3], int(sys.argv[4]))
