"""The CLI of the model bundle: `medfed predict` and `medfed export` (the bundle is bundle.py's)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from medfed.errors import ConfigError

COMMANDS = ("predict", "export")


def add_parsers(commands: Any) -> None:
    predict = commands.add_parser("predict", help="score images with a model bundle: DICOM files "
                                                  "or folders, NIfTI, PNG/JPEG, a MedMNIST .npz")
    predict.add_argument("bundle", type=Path, help="a model/ folder (or the run folder holding it)")
    predict.add_argument("inputs", type=Path, nargs="+", help="files or folders to score")
    predict.add_argument("--out", type=Path, required=True, help="the CSV to write")
    export = commands.add_parser("export", help="export a model bundle (ONNX)")
    export.add_argument("bundle", type=Path, help="a model/ folder (or the run folder holding it)")
    export.add_argument("--onnx", type=Path, required=True, help="the .onnx file to write")


def execute(args: argparse.Namespace) -> int:
    from medfed.bundle import load_bundle

    if args.command == "export":
        from medfed.export import export_onnx, require_onnx

        require_onnx()  # before the bundle is read: the install hint comes first
        difference = export_onnx(load_bundle(args.bundle), args.onnx)
        print(f"{args.onnx} (ONNX Runtime agrees with PyTorch within {difference:.1e})")
        return 0
    from medfed.predict import predict

    if args.out.is_dir():
        raise ConfigError(f"--out {args.out} is a folder; give the CSV file to write")
    scored, failed = predict(load_bundle(args.bundle), args.inputs, args.out)
    note = f"; {failed} unreadable (their reason is in the error column)" if failed else ""
    sys.stderr.write(f"scored {scored} inputs{note}\n")
    print(args.out)
    return 0
