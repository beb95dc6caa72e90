"""The two measurements on the real media behind the expression net's crop and expression-va's time constant
(docs/faces.md, Expressions; docs/predict.md, The default model):

    python scripts/expression_media_study.py

Labels, by eye: in single_face.mp4 and face_noface.mov (the same man) frames 0-18 (0-17) are neutral, frames
24-69 a grin, 70-71 neutral again (19-23 and the grin's end are transitions); the smiling faces of
single_face.jpg and multi_face.jpg (four of its five: the boy at the back is not smiling).

1. Crops: the mean log-probability of the labelled expression, and the share classified right, for each crop.
2. Time constant: expression-va with each time constant on the two recordings, the mean squared distance of its
   output to the labelled expression's circumplex point, over the frames whose label is clear.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from mambava.faces import align_face, crop_box, get_detector
from mambava.faces.align import similarity_transform, template, warp
from mambava.faces.expression import EXPRESSIONS, ExpressionRecognizer
from mambava.media.video import open_video, read_image
from mambava.temporal.expression_va import CIRCUMPLEX, ExpressionVA

MEDIA = Path(__file__).resolve().parents[1] / "tests" / "data" / "media"
NEUTRAL, HAPPY = EXPRESSIONS.index("neutral"), EXPRESSIONS.index("happiness")


def zoomed(image, face, zoom):
    points = (template(112) - 56) * zoom + 56
    return warp(image, similarity_transform(face.landmarks, points), 112)


def fer_crop(image, face, offset=10, padding=40):
    """fer's own crop: the box squared, `offset` px around it, on the grey image padded with its bottom rows' mean."""
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    x1, y1, x2, y2 = (int(v) for v in face.box)
    x, y, w, h = x1, y1, x2 - x1, y2 - y1
    if h > w:
        x, w = x - (h - w) // 2, h
    elif w > h:
        y, h = y - (w - h) // 2, w
    grey = cv2.copyMakeBorder(grey, *[padding] * 4, cv2.BORDER_CONSTANT, value=[cv2.mean(grey[-2:])[0]] * 3)
    top, left = max(0, y - offset + padding), max(0, x - offset + padding)
    return cv2.resize(grey[top : y + h + offset + padding, left : x + w + offset + padding], (64, 64))


def main() -> None:
    torch.set_num_threads(1)
    detector, recognizer = get_detector("mtcnn"), ExpressionRecognizer()
    labelled, videos = [], {}
    for name, neutral_end in (("single_face.mp4", 18), ("face_noface.mov", 17)):
        crops = []
        for frame in open_video(MEDIA / name):
            if frame.index > 71:
                break
            (face,) = detector.detect(frame.image)[:1]
            crops.append(align_face(frame.image, face.landmarks))
            if frame.index <= neutral_end or 24 <= frame.index <= 69:
                labelled.append((frame.image, face, NEUTRAL if frame.index <= neutral_end else HAPPY))
        videos[name] = recognizer.features(np.stack(crops))
    for still in ("single_face.jpg", "multi_face.jpg"):
        image = read_image(MEDIA / still)
        for face in detector.detect(image):
            if still == "multi_face.jpg" and 420 < face.center[0] < 540 and face.center[1] < 300:
                continue  # the boy at the back
            labelled.append((image, face, HAPPY))

    crops = {"aligned 112 (the faces stage's)": lambda im, f: align_face(im, f.landmarks), "fer's crop": fer_crop}
    crops.update({f"aligned, zoom {z}": (lambda im, f, z=z: zoomed(im, f, z)) for z in (1.2, 1.1, 0.9, 0.8, 0.7)})
    crops.update({f"box +{m:.0%}": (lambda im, f, m=m: crop_box(im, f.box, 112, m)) for m in (0, 0.05, 0.1, 0.2)})
    labels = np.array([label for _, _, label in labelled])
    print(f"1. crops, {len(labelled)} labelled faces: mean log p(label), neutral correct, smiling correct")
    for name, crop in crops.items():
        p = recognizer.probabilities(np.stack([crop(image, face) for image, face, _ in labelled]))
        log_p = np.log(np.maximum(p[np.arange(len(p)), labels], 1e-9)).mean()
        right = [np.mean(p[labels == k].argmax(1) == k) for k in (NEUTRAL, HAPPY)]
        print(f"   {name:<34} {log_p:7.3f} {right[0]:7.1%} {right[1]:7.1%}")

    target = np.repeat(CIRCUMPLEX[[NEUTRAL]], 72, axis=0)
    target[20:70] = CIRCUMPLEX[HAPPY]
    scored = np.r_[0:19, 23:69, 71]
    print("2. time constant: mean squared distance to the labelled points (both recordings), jitter")
    for tau in (0.0, 0.01, 0.02, 0.03, 0.04, 0.05, 0.1, 0.2, 0.3, 0.5):
        model, errors, jitter = ExpressionVA(tau), [], []
        for features in videos.values():
            va = model(torch.from_numpy(features)[None])[0].numpy()
            errors.append(((va - target) ** 2).sum(1)[scored].mean())
            jitter.append(np.abs(np.diff(va, axis=0)).sum(1)[np.r_[0:18, 24:68]].mean())
        print(f"   {tau:4.2f} s  {np.mean(errors):.4f}  {np.mean(jitter):.4f}")


if __name__ == "__main__":
    main()
