"""``napari-hires train``: fine-tune a model on corrected labels, or train a denoiser on the image itself."""

from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Any


def run(args: argparse.Namespace) -> int:
    from napari_hires.errors import HiresError
    from napari_hires.io.readers import open_image
    from napari_hires.training import fine_tune, train_self_supervised
    from napari_hires.training.loop import held_out_progress
    from napari_hires.training.sampling import convention_note

    settings = train_settings(args)
    regions = [tuple(args.region)] if args.region else None
    image = open_image(args.image)

    def report(step) -> None:
        if args.quiet:
            return
        if step.step == 1 and step.held_out is not None:
            print(f"step 0/{step.steps}  {held_out_progress(replace(step.held_out, step=0))}", flush=True)
        if step.evaluated or step.step == 1 or step.step % 10 == 0 or step.step == step.steps:
            score = f"  {held_out_progress(step.held_out)}" if step.evaluated else ""
            print(f"step {step.step}/{step.steps}  loss {step.loss:.4f}  {step.seconds:.0f}s{score}", flush=True)

    if args.self_supervised:
        if args.labels:
            raise HiresError("--self-supervised trains on the image alone; drop the LABELS argument")
        job = train_self_supervised(image, args.model, args.out, level=args.level, regions=regions,
                                    settings=settings, callback=report, overwrite=args.overwrite)
    else:
        if not args.labels or not args.model:
            raise HiresError("fine-tuning needs LABELS and --model NAME|FILE (or pass --self-supervised to train a "
                             "denoiser on the image alone)")
        model = args.model
        if args.encoder:
            from napari_hires.models import create_model

            model = create_model(args.model, encoder=args.encoder)
        job = fine_tune(image, open_image(args.labels), model, args.out, level=args.level, regions=regions,
                        zero_is_unlabelled=args.zero_is_unlabelled, settings=settings, callback=report,
                        overwrite=args.overwrite)
    note = "" if job.zero_is_unlabelled is None else f"; {convention_note(job.zero_is_unlabelled)}"
    print(f"trained {job.result.steps_done} steps in {job.result.seconds:.0f}s on {job.result.device}; "
          f"wrote {job.path}{note}{job.notes}")
    return 0


def train_settings(args: argparse.Namespace) -> Any:
    """The TrainSettings of the command line: a flag left out (None) keeps TrainSettings' default."""
    from dataclasses import fields

    from napari_hires.training import TrainSettings

    given = {f.name: getattr(args, f.name) for f in fields(TrainSettings) if getattr(args, f.name, None) is not None}
    return TrainSettings(**given)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``train`` sub-command."""
    p = sub.add_parser("train", help="fine-tune a model on corrected labels, or train a denoiser self-supervised")
    p.add_argument("image", help="image to train on (OME-Zarr, zarr, TIFF, ...)")
    p.add_argument("labels", nargs="?", help="labels on that image (classes 0..K-1, 255 = unlabelled; scribbles "
                                             "painted on 0 need --zero-is-unlabelled or --zero-is-class)")
    p.add_argument("--model", help="registered name or model file to start from (default for --self-supervised: "
                                   "a small MAXIM)")
    p.add_argument("--encoder", metavar="FILE",
                   help="start --model (an architecture such as maxvit_tiny_seg) from this model file's or published "
                        "checkpoint's backbone; the encoder then trains at --encoder-lr x the learning rate")
    p.add_argument("--out", required=True, help="model file to write (NAME.safetensors + NAME.json)")
    p.add_argument("--self-supervised", action="store_true",
                   help="learn to denoise IMAGE from itself (blind-spot / Noise2Void), no labels")
    zero = p.add_mutually_exclusive_group()
    zero.add_argument("--zero-is-unlabelled", dest="zero_is_unlabelled", action="store_const", const=True,
                      help="labels are scribbles where 0 means unlabelled and label v is class v-1")
    zero.add_argument("--zero-is-class", dest="zero_is_unlabelled", action="store_const", const=False,
                      help="0 is class 0 even in labels that look like scribbles (default: decided from the labels, "
                           "scribble-like ones refused)")
    p.add_argument("--region", nargs=4, type=int, metavar=("Y0", "Y1", "X0", "X1"),
                   help="train only on this level-0 region")
    p.add_argument("--level", type=int, default=0, help="pyramid level to train on")
    p.add_argument("--steps", type=int, default=None,
                   help="most training steps (default: 1000; training stops earlier once the held-out score stops "
                        "rising)")
    p.add_argument("--holdout", type=float, default=None,
                   help="share of the labelled pixels held out by region to score on (default: 0.2; 0: none, train "
                        "on all for --steps steps)")
    p.add_argument("--eval-every", dest="eval_every", type=int, default=None,
                   help="steps between held-out evaluations (default: 25)")
    p.add_argument("--patience", type=int, default=None,
                   help="evaluations without a gain before stopping (default: 6; 0: never stop early)")
    p.add_argument("--batch", type=int, default=None, help="tiles per step (default: 8)")
    p.add_argument("--tile", type=int, default=None, help="training tile side in pixels (default: 256)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default: 0.001)")
    p.add_argument("--encoder-lr", dest="encoder_lr", type=float, default=None,
                   help="the --encoder's learning rate as a share of --lr (default: 0.1)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: 0)")
    p.add_argument("--device", default=None, help="auto (the default), cuda, mps or cpu")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--quiet", action="store_true", help="no loss per step")
    p.set_defaults(func=run)
