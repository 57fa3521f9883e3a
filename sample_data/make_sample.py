"""Build the shipped sample: a labeled image set with planted defects and a small CNN.

Run from the repository root (needs torch; downloads nothing)::

    python sample_data/make_sample.py

It writes, under ``sample_data/``:

* ``images/<class>/img_NNNN.jpg`` -- the audit set: 6 classes of synthetic shapes on
  cluttered backgrounds, 64x64 JPEG;
* ``model.onnx``, ``model.ts`` (TorchScript), ``model.pt2`` (``torch.export``) -- the same
  CNN, trained on a separate, clean training set drawn from the same generator;
* ``manifest.json`` -- the planted defects, which the tests check the audit recovers.

Planted defects (all listed in the manifest):

* **mislabeled** -- images drawn as one class and filed under another;
* **spurious cue** -- every *training* image of class ``triangle`` carries a small magenta
  square in the top-left corner, and no other training image does, so the model learns
  the corner instead of the shape.  In the audit set most triangles carry it, a few
  do not (``cue_missing``), and a few images of other classes do (``cue_on_other``);
* **near-duplicates** -- pairs of files that are the same drawing saved twice with a
  slight change of brightness and JPEG quality.

Training is seeded; the files it writes are committed, so the tests never retrain.
"""

from __future__ import annotations

import io
import json
import math
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

HERE = Path(__file__).resolve().parent
CLASSES = ["circle", "cross", "ring", "square", "star", "triangle"]
CUE_CLASS = "triangle"
SIZE = 64
CUE_BOX = (4, 4, 11, 11)  # the drawn magenta square, inclusive pixel box
CUE_REGION = (0, 0, 16, 16)  # (x0, y0, x1, y1): where the tests look for Grad-CAM mass
CUE_COLOR = (255, 0, 255)
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

PER_CLASS_EVAL = 45
PER_CLASS_TRAIN = 400
N_MISLABELED = 10
N_CUE_MISSING = 4
N_CUE_ON_OTHER = 4
N_DUPLICATE_PAIRS = 4


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if kind == "square":
        pts = [
            (math.cos(angle + k * math.pi / 2 + math.pi / 4), math.sin(angle + k * math.pi / 2 + math.pi / 4))
            for k in range(4)
        ]
    elif kind == "triangle":
        pts = [(math.cos(angle + k * 2 * math.pi / 3), math.sin(angle + k * 2 * math.pi / 3)) for k in range(3)]
    elif kind == "star":
        pts = []
        for k in range(10):
            rr = 1.0 if k % 2 == 0 else 0.45
            a = angle + k * math.pi / 5
            pts.append((rr * math.cos(a), rr * math.sin(a)))
    elif kind == "cross":
        w = 0.33
        base = [
            (-w, -1),
            (w, -1),
            (w, -w),
            (1, -w),
            (1, w),
            (w, w),
            (w, 1),
            (-w, 1),
            (-w, w),
            (-1, w),
            (-1, -w),
            (-w, -w),
        ]
        ca, sa = math.cos(angle), math.sin(angle)
        pts = [(x * ca - y * sa, x * sa + y * ca) for x, y in base]
    else:  # pragma: no cover
        raise ValueError(kind)
    return [(cx + r * x, cy + r * y) for x, y in pts]


def draw(kind: str, rng: np.random.Generator, *, cue: bool) -> Image.Image:
    """One synthetic image of class ``kind``."""
    # Background: a smooth two-colour gradient, noise, and a few distractor strokes.
    c0 = rng.uniform(40, 215, 3)
    c1 = rng.uniform(40, 215, 3)
    t = np.linspace(0, 1, SIZE)
    direction = rng.uniform(0, 2 * math.pi)
    ramp = (np.cos(direction) * t[None, :] + np.sin(direction) * t[:, None] + 1) / 2
    bg = c0[None, None, :] * (1 - ramp[..., None]) + c1[None, None, :] * ramp[..., None]
    bg += rng.normal(0, 6, bg.shape)
    img = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8), "RGB")
    d = ImageDraw.Draw(img)
    for _ in range(rng.integers(1, 4)):
        pts = [tuple(rng.uniform(0, SIZE, 2)) for _ in range(2)]
        d.line(pts, fill=tuple(int(v) for v in rng.uniform(0, 255, 3)), width=1)
    # The shape, in a colour that stands out from the local background.
    mean_bg = bg.mean(axis=(0, 1))
    color = np.where(mean_bg > 128, rng.uniform(0, 70, 3), rng.uniform(185, 255, 3))
    fill = tuple(int(v) for v in color)
    r = rng.uniform(10, 15)
    cx, cy = rng.uniform(22, 44, 2)
    angle = rng.uniform(0, 2 * math.pi)
    if kind == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif kind == "ring":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], outline=fill, width=max(2, int(r / 3.5)))
    else:
        d.polygon(_polygon(kind, cx, cy, r, angle), fill=fill)
    img = img.filter(ImageFilter.GaussianBlur(0.5))
    if cue:
        ImageDraw.Draw(img).rectangle(CUE_BOX, fill=CUE_COLOR)
    return img


def jpeg_bytes(img: Image.Image, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def training_set(seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Clean training images (through a JPEG round trip, as the audit set) and labels."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for label, kind in enumerate(CLASSES):
        for _ in range(PER_CLASS_TRAIN):
            img = draw(kind, rng, cue=kind == CUE_CLASS)
            img = Image.open(io.BytesIO(jpeg_bytes(img))).convert("RGB")
            xs.append(np.asarray(img))
            ys.append(label)
    return np.stack(xs), np.array(ys)


def build_model(num_classes: int = len(CLASSES)):
    import torch.nn as nn
    import torch.nn.functional as F

    class SampleCNN(nn.Module):
        """Three conv stages (64 -> 32 -> 16 px), a last conv with a functional ReLU,
        global average pooling and a linear classifier."""

        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 24, 3, padding=1)
            self.bn1 = nn.BatchNorm2d(24)
            self.conv2 = nn.Conv2d(24, 48, 3, padding=1)
            self.bn2 = nn.BatchNorm2d(48)
            self.conv3 = nn.Conv2d(48, 96, 3, padding=1)
            self.bn3 = nn.BatchNorm2d(96)
            self.conv4 = nn.Conv2d(96, 96, 3, padding=1)
            self.fc = nn.Linear(96, num_classes)

        def forward(self, x):
            x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
            x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
            x = F.relu(self.bn3(self.conv3(x)))
            x = F.relu(self.conv4(x))
            return self.fc(x.mean(dim=(2, 3)))

    return SampleCNN()


def train(xs: np.ndarray, ys: np.ndarray, epochs: int = 30, seed: int = 0):
    import torch

    torch.manual_seed(seed)
    model = build_model()
    x = (torch.from_numpy(xs).float() / 255.0 - torch.tensor(MEAN)) / torch.tensor(STD)
    x = x.permute(0, 3, 1, 2).contiguous()
    y = torch.from_numpy(ys).long()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    g = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(x), generator=g)
        total = 0.0
        for i in range(0, len(x), 64):
            idx = perm[i : i + 64]
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        sched.step()
        print(f"epoch {epoch + 1}: loss {total / len(x):.4f}")
    return model.eval()


def write_audit_set(seed: int = 7) -> dict:
    """Draw the audit set with its planted defects; return the manifest."""
    rng = np.random.default_rng(seed)
    out = HERE / "images"
    if out.exists():
        shutil.rmtree(out)
    for kind in CLASSES:
        (out / kind).mkdir(parents=True)
    items = []  # (true class, drawn image, cue flag)
    for kind in CLASSES:
        for _ in range(PER_CLASS_EVAL):
            items.append([kind, kind])
    order = rng.permutation(len(items))
    items = [items[i] for i in order]
    n = len(items)
    # Choose which items carry which defect (disjoint sets).
    picks = rng.permutation(n)
    cue_class_items = [i for i in picks if items[i][0] == CUE_CLASS]
    other_items = [i for i in picks if items[i][0] != CUE_CLASS]
    cue_missing = set(cue_class_items[:N_CUE_MISSING])
    cue_on_other = set(other_items[:N_CUE_ON_OTHER])
    used = cue_missing | cue_on_other
    free = [i for i in picks if i not in used]
    mislabeled = free[:N_MISLABELED]
    duplicates = free[N_MISLABELED : N_MISLABELED + N_DUPLICATE_PAIRS]
    folder = {}
    for i in mislabeled:
        true = items[i][0]
        choices = [c for c in CLASSES if c != true]
        folder[i] = choices[int(rng.integers(len(choices)))]
    manifest: dict = {
        "classes": CLASSES,
        "image_size": [SIZE, SIZE],
        "spurious_cue": {
            "class": CUE_CLASS,
            "region": list(CUE_REGION),
            "box": list(CUE_BOX),
            "color": list(CUE_COLOR),
            "description": "magenta square in the top-left corner on every training image of the class",
        },
        "mislabeled": [],
        "cue_missing": [],
        "cue_on_other": [],
        "near_duplicates": [],
    }
    names = {i: f"img_{k:04d}.jpg" for k, i in enumerate(range(n))}
    next_id = n
    for i in range(n):
        true = items[i][0]
        cue = (true == CUE_CLASS and i not in cue_missing) or i in cue_on_other
        img = draw(true, rng, cue=cue)
        label = folder.get(i, true)
        rel = f"{label}/{names[i]}"
        (out / rel).write_bytes(jpeg_bytes(img))
        if i in folder:
            manifest["mislabeled"].append({"file": rel, "true": true, "given": label})
        if i in cue_missing:
            manifest["cue_missing"].append(rel)
        if i in cue_on_other:
            manifest["cue_on_other"].append(rel)
        if i in duplicates:
            arr = np.asarray(img).astype(np.int16) + 4
            twin = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
            twin_rel = f"{label}/img_{next_id:04d}.jpg"
            next_id += 1
            (out / twin_rel).write_bytes(jpeg_bytes(twin, quality=80))
            manifest["near_duplicates"].append([rel, twin_rel])
    for key in ("mislabeled",):
        manifest[key].sort(key=lambda d: d["file"])
    for key in ("cue_missing", "cue_on_other"):
        manifest[key].sort()
    manifest["near_duplicates"].sort()
    return manifest


def export(model, metadata: dict) -> None:
    import torch

    example = torch.zeros(2, 3, SIZE, SIZE)
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(HERE / "model.pt2"))
    scripted = torch.jit.script(model)
    torch.jit.save(scripted, str(HERE / "model.ts"), _extra_files={"reportgen.json": json.dumps(metadata)})
    onnx_program = torch.onnx.export(
        model,
        (example,),
        dynamo=True,
        input_names=["image"],
        output_names=["logits"],
        dynamic_shapes=({0: batch},),
        verbose=False,
    )
    onnx_program.save(str(HERE / "model.onnx"))
    import onnx

    proto = onnx.load(str(HERE / "model.onnx"))
    entry = proto.metadata_props.add()
    entry.key = "reportgen"
    entry.value = json.dumps(metadata)
    onnx.save(proto, str(HERE / "model.onnx"))


def main() -> None:
    import torch

    torch.set_num_threads(2)
    manifest = write_audit_set()
    xs, ys = training_set()
    model = train(xs, ys)
    metadata = {"classes": CLASSES, "input_size": [SIZE, SIZE], "mean": list(MEAN), "std": list(STD)}
    export(model, metadata)
    manifest["model"] = {
        "architecture": "SampleCNN (see build_model in make_sample.py)",
        "trained_on": f"{PER_CLASS_TRAIN} clean images per class from the same generator (seed 1)",
        "files": ["model.onnx", "model.ts", "model.pt2"],
    }
    (HERE / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"wrote {sum(1 for _ in (HERE / 'images').rglob('*.jpg'))} images and the models to {HERE}")


if __name__ == "__main__":
    main()
