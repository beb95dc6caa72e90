"""`mambava demo`: every stage of the pipeline on a generated face-video dataset, on CPU, in minutes.

    result = run_demo("demo_out", DemoConfig.quick())     # -> demo_out/report.md, demo_out/results.json

Stages (each prints a line with its time; the long ones show a progress bar):

1. generate   `mambava.synth.generate`: synthetic affect videos in the exact Aff-Wild2 layout (raw videos,
              `cropped_aligned/`, annotations with -5 frames, a test list); the test labels stay aside in
              `synth_ground_truth/`, as the ABAW organisers keep theirs.
2. stills     `mambava.synth.generate_stills`: an AffectNet-like set of single faces of other identities with
              per-image valence/arousal, the stand-in for the large still-image data real backbones are
              pretrained on (no pretrained face model can be had offline).
3. backbone   a small ViT (`mambava.backbone.ViTEncoder`, 80 px input, 16 px patches, 128-d, 4 blocks), first
              trained on the stills (all blocks), then fine-tuned on the training videos' frames with the
              paper's partial freezing (patch embedding and the lower blocks frozen, `mambava.backbone.finetune`), on
              frame-level CCC. Why not from scratch on the videos alone: measured here, a ViT trained only on
              the video frames memorises who is on screen (frames of one video are near-duplicates, so a few
              dozen videos give few independent expressions) and reaches a validation CCC_v near 0.5 and a
              CCC_a near 0; MAE pretraining on the crops would need far longer than the demo's budget.
4. extract    `mambava.backbone.extract.extract_features`: CLS features of every crop into a feature store (missing
              crops forward-filled and masked).
5. train      `mambava.training.train`: the Mamba-VA temporal model (causal TCN -> Mamba encoder -> head; the
              paper's structure at reduced widths, see `DemoConfig`) and the frame-wise baseline (`mlp`, the
              same features one frame at a time), both with the default recipe (AdamW, warmup + cosine, CCC loss,
              model selection by validation P_VA).
6. distill    `mambava.demo.distill`: the fine-tuned ViT distilled into a student ViT of ~6x fewer FLOPs
              (`mambava.backbone.distill`, on the training videos' crops), and the TCN+Mamba scored unchanged on
              the held-out test subjects with the teacher's and with the student's features.
7. evaluate   `mambava.training.evaluate.evaluate_videos` on the held-out test subjects (whole videos, windows
stitched).
   audio      (`DemoConfig.audio`) `mambava.demo.ablation`: the voices' audio features, then audio-only, early and
              mid fusion models, scored the same way (results.json `audio.rows`).
8. predict    `mambava.inference.predict.Predictor` on a held-out raw video: faces detected, tracked and aligned by the
              faces stage (MTCNN), encoded by the fine-tuned ViT, then the temporal model; compared with the
              hidden labels.
9. report     OUT/report.md: the table (frame-wise vs TCN+Mamba: CCC_v, CCC_a, P_VA), training curves,
              predicted vs true plots, timings; OUT/results.json holds the same numbers.

With `own_crops` (the default; `--quick` only with `--own-crops`) two stages run after generate: landmarks
(`mambava.demo.own_crops.landmark_stage`: the landmark refiner trained on the training videos' true landmarks,
OUT/landmarks.safetensors) and faces (`mambava faces --dataset` over every raw video, MTCNN's points refined,
into OUT/own_crops/), whose crops (not the generator's ideal ones) the backbone, the features and the temporal
models are trained on, as `predict` will see them; their alignment error against the generator's true
landmarks is reported, and predict (with the same refiner) runs on every held-out raw video, scored beside
the same model on the generator's crops of those videos. The backbone's training crops are then jittered
(`DemoConfig.align_jitter`, 1 px / 2% / 1°).
"""

from mambava.demo.run import REPORT_FILE, RESULTS_FILE, DemoConfig, DemoResult, run_demo

__all__ = ["DemoConfig", "DemoResult", "REPORT_FILE", "RESULTS_FILE", "run_demo"]
