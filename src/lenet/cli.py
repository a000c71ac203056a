"""The `lenet` command: argparse sub-commands wired to the library, no logic of its own.

    lenet models [--json]                       lenet summary MODEL [--json]
    lenet data fetch [--dataset D] [--data-root DIR] [--from DIR]
    lenet data show [--dataset D] [--index I] [--grid N --out PNG]
    lenet train [--preset NAME] [--model M] [--epochs N] [--out DIR] ... [--resume FILE]
    lenet eval [--checkpoint C] [--dataset D] [--json] [--out DIR]
    lenet predict [--checkpoint C] IMAGE_OR_DIR... [--json] [--top-k K] [--save-input DIR]
    lenet explain IMAGE... | --index N [--checkpoint C] --out DIR [--json]
    lenet export [--checkpoint C] --format onnx [--int8] --out FILE
    lenet serve [--checkpoint C]... [--host 127.0.0.1] [--port 8000] [--allow-host NAME]...
    lenet bench [--model M] [--batch-size N] [--json]

Exit codes: 0 success, 1 some inputs failed (predict), 2 bad input (one line on stderr;
the traceback only with --debug), 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable

from lenet import __version__
from lenet.errors import LenetError

DATASET_CHOICES = ("mnist", "fashion-mnist")
EVAL_PRECISIONS = ("auto", "float32", "bfloat16")  # lenet.precision's (not imported: no torch at start-up)


def add_common(sp: argparse.ArgumentParser, json_flag: bool = True) -> None:
    """Flags every sub-command takes (--debug also works before the sub-command)."""
    sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    if json_flag:
        sp.add_argument("--json", action="store_true", help="machine-readable output on stdout")


def add_data_root(sp: argparse.ArgumentParser) -> None:
    """--data-root, the spelling of every command (`lenet train` has it from TrainConfig.data_root)."""
    sp.add_argument("--data-root", metavar="DIR", help="data folder (default: $LENET_DATA_ROOT or ~/.cache/lenet)")
    add_root_alias(sp)


def add_root_alias(sp: argparse.ArgumentParser) -> None:
    """The older spelling --root keeps working in scripts, but is no longer listed."""
    sp.add_argument("--root", dest="data_root", help=argparse.SUPPRESS)


def data_root(args) -> Path | None:
    return Path(args.data_root) if args.data_root else None


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (no usage dump) and exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def emit_json(value: Any) -> None:
    print(json.dumps(value))


def show(args, value: Any, text: str) -> int:
    """The command's result: `value` as JSON with --json, else the human-readable `text`."""
    if args.json:
        emit_json(value)
    else:
        print(text)
    return 0


# -- commands ------------------------------------------------------------------------------

def cmd_models(args) -> int:
    from lenet.catalog import MODELS  # precomputed: no torch import, the command answers at once

    rows = list(MODELS)
    if args.json:
        emit_json(rows)
    else:
        print(f"{'model':<24}{'params':>10}  {'input':<7} description")
        for r in rows:
            print(f"{r['name']:<24}{r['parameters']:>10,}  {r['input_size']}x{r['input_size']:<4} {r['description']}")
    return 0


def cmd_summary(args) -> int:
    from torchinfo import summary

    from lenet.models import count_parameters, create_model, get_spec

    try:
        spec = get_spec(args.model)
    except KeyError as exc:
        raise LenetError(exc.args[0]) from None
    model = create_model(args.model)  # torchinfo's hooks make LeNet5/LeNet5BN run layer by layer, all seen
    stats = summary(model, input_size=(1, 1, spec.input_size, spec.input_size), verbose=0,
                    col_names=("output_size", "num_params"), depth=3)
    if args.json:
        layers = [{"layer": f"{layer.class_name}-{layer.depth_index}" if layer.depth_index else layer.class_name,
                   "depth": layer.depth, "output_shape": list(layer.output_size), "parameters": layer.trainable_params}
                  for layer in stats.summary_list if layer.depth > 0]
        emit_json({"model": spec.name, "input_shape": [1, 1, spec.input_size, spec.input_size],
                   "parameters": count_parameters(model), "layers": layers})
    else:
        print(stats)
    return 0


def cmd_data_fetch(args) -> int:
    from lenet.sources import fetch

    folder = fetch(args.dataset, data_root(args),
                   Path(args.from_dir) if args.from_dir else None)
    return show(args, {"dataset": args.dataset, "path": str(folder)}, f"{args.dataset}: verified files in {folder}")


def cmd_data_show(args) -> int:
    from lenet.data import ascii_image, load_dataset

    data = load_dataset(args.dataset, data_root(args))
    images = data.train_images if args.split == "train" else data.test_images
    labels = data.train_labels if args.split == "train" else data.test_labels
    if args.grid is not None:
        from lenet.report import save_image_grid

        if args.grid < 1 or args.grid * args.grid > len(images):
            raise LenetError(f"--grid {args.grid}: must be between 1 and {int(len(images) ** 0.5)}")
        if not args.out:
            raise LenetError("--grid needs --out FILE.png")
        n = args.grid * args.grid
        path = save_image_grid(images[:n], [data.class_names[i] for i in labels[:n].tolist()],
                               Path(args.out), ncols=args.grid,
                               title=f"{data.name} {args.split}: the first {n} images and their labels")
        return show(args, {"path": str(path), "images": n}, f"wrote {path} ({n} images)")
    if not 0 <= args.index < len(images):
        raise LenetError(f"--index {args.index}: the {args.split} set has images 0..{len(images) - 1}")
    label = int(labels[args.index])
    if args.json:
        emit_json({"dataset": data.name, "split": args.split, "index": args.index, "label": label,
                   "name": data.class_names[label], "pixels": images[args.index].tolist()})
    else:
        print(ascii_image(images[args.index], args.pixels))
        print(f"{data.name} {args.split}[{args.index}]: label {label} ({data.class_names[label]})")
    return 0


def cmd_train(args) -> int:
    from lenet import config
    from lenet.distributed import env_world, launch, under_launcher
    from lenet.train import fit

    resumed = None
    if args.resume:  # read once here: its config is the base, fit() restores its state
        from lenet.resume import read_resume

        log = {} if env_world().main else {"log": lambda s: None}  # under torchrun, rank 0 speaks
        resumed = read_resume(args.resume, **log)  # checked; its data_root is not used (the flag or the default is)
    cfg = config.from_args(args, resumed.config if resumed else None)
    if cfg.nproc > 1 and not under_launcher():  # --nproc N: the same command on N processes, through torchrun
        return launch(args.argv, cfg.nproc)
    metrics = fit(cfg, resume=resumed, progress=not args.no_progress, overwrite=args.overwrite)
    if not env_world().main:
        return 0  # rank 0 reports
    return show(args, metrics, f"test accuracy {metrics['test_accuracy']:.4f} (model of epoch {metrics['best_epoch']}, "
                f"selected on {metrics['selected_on']}), {metrics['seconds']:.1f} s; run folder {cfg.out}")


def cmd_eval(args) -> int:
    from lenet.evalcmd import eval_command

    result = eval_command(args.checkpoint, args.dataset, Path(args.out) if args.out else None, args.data_root,
                          args.precision)
    if args.json:
        emit_json(result)
    else:
        print(f"{result['checkpoint']} on {result['dataset']} test: accuracy {result['accuracy']:.4f}, "
              f"loss {result['loss']:.4f}")
        for name, acc in zip(result["class_names"], result["per_class_accuracy"]):
            print(f"  {name:<12} {acc:.4f}")
        print(f"model time {result['model_seconds']:.3f} s ({result['precision']})")
        for path in result.get("files", []):
            print(f"wrote {path}")
    return 0


def cmd_predict(args) -> int:
    from lenet.predict import predict_command

    return predict_command(args.inputs, args.checkpoint, args.top_k, args.json, args.save_input, number=args.number)


def cmd_explain(args) -> int:
    from lenet.explain import explain_command

    results = explain_command(args.inputs, args.index or [], args.checkpoint, Path(args.out), args.data_root)
    if args.json:
        for result in results:
            emit_json(result)
    else:
        for r in results:
            print(f"{r['input']}: predicted {r['name']} (p={r['probability']:.2f}); layers "
                  + ", ".join(layer["title"] for layer in r["layers"]))
            for path in r["files"]:
                print(f"  wrote {path}")
    return 0


def cmd_calibrate(args) -> int:
    from lenet.calibrate import calibrate_command

    result = calibrate_command(args.checkpoint, Path(args.out), data_root(args), args.seed, args.overwrite,
                               log=(lambda m: print(m, file=sys.stderr)) if args.json else print)
    r = result["report"]
    return show(args, result, f"wrote {result['path']}: temperature {result['temperature']:.3f}; held-out images "
                f"refused {r['digits_refused']:.2%}, unsure {r['digits_unsure']:.2%}; generated non-digits "
                f"refused {r['nondigits_refused']:.2%}")


def cmd_export(args) -> int:
    from lenet.export import export_onnx

    result = export_onnx(args.checkpoint, Path(args.out), int8=args.int8, data_root=data_root(args))
    accuracy = (f"; {result['dataset']} test accuracy {result['test_accuracy']:.2%} (float32 "
                f"{result['fp32_test_accuracy']:.2%})" if args.int8 else "")
    return show(args, result, f"wrote {result['path']} ({result['bytes']:,} bytes); onnxruntime vs PyTorch: max "
                f"logit difference {result['max_abs_logit_difference']:.2g}, top-1 agreement "
                f"{result['top1_agreement']:.0%}{accuracy}")


def cmd_bench(args) -> int:
    from lenet.bench import bench

    result = bench(args.model, data_root(args), args.batch_size)
    return show(args, result, f"{result['model']} on {result['threads']} threads, batch {result['batch_size']}: training "
                f"{result['train_images_per_second']:,} img/s ({result['epoch_seconds']} s/epoch), with augmentation "
                f"{result['train_images_per_second_augmented']:,} img/s; 10k test images in {result['eval_10k_seconds']} s "
                f"({result['eval_precision']}); "
                f"one drawing predicted in {result['predict_one_drawing_ms']} ms")


def cmd_serve(args) -> int:
    from lenet.serve import serve_command

    return serve_command(args.checkpoint or [None], host=args.host, port=args.port, allow_hosts=args.allow_host)


# -- parser --------------------------------------------------------------------------------

def build_parser() -> Parser:
    p = Parser(prog="lenet", description="LeNet-5 handwritten-digit recognition: train, evaluate, "
               "predict, serve. `--checkpoint` defaults to the embedded MNIST LeNet-5.")
    p.add_argument("--version", action="version", version=f"lenet {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser, required=True)

    def command(name: str, func: Callable, help: str, json_flag: bool = True) -> Parser:
        sp = sub.add_parser(name, help=help, description=help)
        sp.set_defaults(func=func)
        add_common(sp, json_flag)
        return sp

    command("models", cmd_models, "list the registered models")
    sp = command("summary", cmd_summary, "per-layer output shapes and parameters of a model")
    sp.add_argument("model", help="model name (see `lenet models`)")

    data = sub.add_parser("data", help="fetch and look at the datasets", description="fetch and look at the datasets")
    data_sub = data.add_subparsers(dest="data_command", metavar="ACTION", parser_class=Parser, required=True)
    for name, func, help in (("fetch", cmd_data_fetch, "download or find the dataset, verify SHA-256"),
                             ("show", cmd_data_show, "show a sample in the terminal, or save a grid")):
        sp = data_sub.add_parser(name, help=help, description=help)
        sp.set_defaults(func=func)
        add_common(sp)
        sp.add_argument("--dataset", choices=DATASET_CHOICES, default="mnist")
        add_data_root(sp)
    fetch_p, show_p = data_sub.choices["fetch"], data_sub.choices["show"]
    fetch_p.add_argument("--from", dest="from_dir", metavar="DIR",
                         help="use only this folder's four IDX files (.gz or raw)")
    show_p.add_argument("--split", choices=("train", "test"), default="train")
    show_p.add_argument("--index", type=int, default=0, help="which image to print (default 0)")
    show_p.add_argument("--grid", type=int, metavar="N", help="save the first NxN images as a picture")
    show_p.add_argument("--out", metavar="PNG", help="picture file for --grid")
    show_p.add_argument("--pixels", choices=("shades", "numbers", "hex"), default="shades",
                        help="print the image as shades of grey (default), 0-255 numbers, or hex")

    from lenet.config import add_arguments

    sp = command("train", cmd_train, "train a model; writes DIR/model.safetensors, metrics.json, curves.png")
    add_arguments(sp)
    add_root_alias(sp)
    sp.add_argument("--resume", metavar="FILE", help="continue a run from its last.safetensors")
    sp.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    sp.add_argument("--no-progress", action="store_true", help="no progress bar (there is none unless stderr is a terminal)")

    sp = command("eval", cmd_eval, "accuracy, loss, per-class accuracy and confusion matrix on a test set")
    sp.add_argument("--checkpoint", help="model file or embedded name (default: mnist)")
    sp.add_argument("--dataset", choices=DATASET_CHOICES, help="default: the checkpoint's dataset")
    add_data_root(sp)
    sp.add_argument("--out", metavar="DIR", help="write the confusion matrix and misclassified images here")
    sp.add_argument("--precision", choices=EVAL_PRECISIONS, default="auto",
                    help="lenet5-bn's convolutions in bfloat16 or float32; auto (default): bfloat16 where the CPU "
                         "has AMX units (1.4-2x faster there; logits within a few hundredths: the embedded mnist "
                         "model's test predictions unchanged, fashion-mnist's 9 of 10,000 changed), else float32")

    sp = command("predict", cmd_predict, "recognise digits in images (files or folders)")
    sp.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR")
    sp.add_argument("--checkpoint", help="model file or embedded name: mnist (default), fashion-mnist")
    sp.add_argument("--top-k", type=int, default=3, metavar="K", help="show the K most likely classes")
    sp.add_argument("--save-input", metavar="DIR", help="save what the model saw (28x28) next to a copy of each input")
    sp.add_argument("--number", action="store_true", help="read a whole handwritten number in each image, left to right")

    sp = command("explain", cmd_explain, "look inside the model: preprocessing steps, every layer's "
                 "activations, the kernels and attributions, as pictures in OUT/NAME/")
    sp.add_argument("inputs", nargs="*", metavar="IMAGE_OR_DIR")
    sp.add_argument("--index", type=int, action="append", metavar="N", help="a test-set image (repeatable)")
    sp.add_argument("--checkpoint", help="model file or embedded name: mnist (default), fashion-mnist")
    sp.add_argument("--out", required=True, metavar="DIR", help="folder for the pictures (one sub-folder per input)")
    add_data_root(sp)

    sp = command("calibrate", cmd_calibrate, "fit the statuses (ok / unsure / not_a_digit) of a checkpoint on "
                 "held-out data; writes a calibrated copy")
    sp.add_argument("--checkpoint", help="model file or embedded name (default: mnist)")
    sp.add_argument("--out", required=True, metavar="FILE", help="the calibrated .safetensors to write")
    sp.add_argument("--seed", type=int, default=0, help="seed of the generated non-digits and handed-over digits")
    sp.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    add_data_root(sp)

    sp = command("export", cmd_export, "export a checkpoint to ONNX (input contract built in), checked with onnxruntime")
    sp.add_argument("--checkpoint", help="model file or embedded name (default: mnist)")
    sp.add_argument("--format", choices=("onnx",), default="onnx")
    sp.add_argument("--int8", action="store_true", help="static int8 quantisation, calibrated on 300 training "
                    "images of the checkpoint's dataset (needs it: --data-root): for the embedded model a 3.4x "
                    "smaller file (110 kB), 1.3-1.45x faster under onnxruntime on one thread (1.0-1.4x on two, "
                    "this 2-core CPU), the same test accuracy (99.69%%; reported)")
    sp.add_argument("--out", required=True, metavar="FILE", help="the .onnx file to write")
    add_data_root(sp)

    sp = command("bench", cmd_bench, "training and inference throughput on this machine (about a minute)")
    sp.add_argument("--model", default="lenet5", help="model to time (default lenet5)")
    sp.add_argument("--batch-size", type=int, default=512, help="training batch size to time (default 512)")
    add_data_root(sp)

    sp = command("serve", cmd_serve, "the drawing page and JSON API on http://HOST:PORT", json_flag=False)
    sp.add_argument("--checkpoint", action="append", help="model file or embedded name; repeat for several")
    sp.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    sp.add_argument("--port", type=int, default=8000, help="TCP port, 0-65535 (0: any free one; default 8000)")
    sp.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                    help="also answer requests for this host name (repeatable); only loopback names "
                         "and the --host address are answered otherwise, which stops DNS rebinding")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error already printed
        return int(exc.code or 0)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # `lenet train --nproc N` passes them on
    try:
        return args.func(args)
    except LenetError as exc:
        if args.debug:
            raise
        print(f"lenet: error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)
    except KeyboardInterrupt:
        print("lenet: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `lenet predict ... | head`
        return 0


if __name__ == "__main__":
    sys.exit(main())
