"""Serve the book's models: ``python -m effdl.serve`` (``make serve``), then talk to it with ``curl`` or OpenAI's
client at ``http://127.0.0.1:8000/v1``.

The text model is SmolLM2-135M-Instruct (``effdl.models.smollm2``, with its chat template) or the character-level
Shakespeare GPT of the zoo (``gpt-shakespeare``, chats joined line by line); the classifier is the zoo's
Fashion-MNIST CNN or ResNet, in fp32 or, with ``--int8``, as ``effdl.quant.model.int8_engine`` makes it (torch.ao,
calibrated on 512 training images). The classifier reads pixels in [0, 1] (the raw bytes / 255) and standardizes
them itself. A zoo model that is not cached yet is trained first (minutes). Stop the server with Ctrl-C: it
finishes the requests it accepted.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import logging

import torch
import uvicorn
from torchvision.transforms import Normalize

from effdl import data, zoo
from effdl.models import smollm2
from effdl.quant.model import int8_engine
from effdl.serve import ImageModel, Limits, TextModel, create_app

TEXT_MODELS = ("smollm2", "gpt-shakespeare", "none")
CLASSIFIERS = ("cnn-fmnist", "resnet-fmnist", "none")
LIMIT_HELP = {
    "max_batch": "requests decoded together, and images per classifier forward",
    "max_wait_ms": "how long the classifier waits to fill a batch, in milliseconds",
    "queue_size": "requests waiting per model; more are refused with 429 and Retry-After",
    "max_prompt_tokens": "longest prompt, in tokens (400 beyond)",
    "max_tokens": "most new tokens a request may ask for, and the default (400 beyond)",
    "timeout_s": "seconds a request may take before it is answered 504",
    "max_body_bytes": "largest request body, in bytes (413 beyond)",
    "retry_after_s": "the Retry-After of a 429, in seconds",
}


def text_model(name: str) -> TextModel | None:
    if name == "smollm2":
        model, tokenizer = smollm2()
        return TextModel("SmolLM2-135M-Instruct", model, tokenizer)
    if name == "gpt-shakespeare":
        return TextModel(name, zoo.pretrained(name).model, data.shakespeare().tokenizer)
    return None


def image_model(name: str, int8: bool) -> ImageModel | None:
    if name == "none":
        return None
    model = zoo.pretrained(name).model.cpu().eval()
    if int8:
        calibration = [x for x, _ in data.loader(data.fashion_mnist("train", limit=512), 128)]
        model = int8_engine(model, calibration, calibration[0][:2])
    standardize = Normalize([data.FMNIST_MEAN], [data.FMNIST_STD])
    return ImageModel(f"{name}-int8" if int8 else name, torch.nn.Sequential(standardize, model), data.FMNIST_CLASSES)


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m effdl.serve", description=__doc__,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)  # fmt: skip
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 exposes it to the network)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on")
    parser.add_argument("--model", choices=TEXT_MODELS, default="smollm2", help="the text model")
    parser.add_argument("--classifier", choices=CLASSIFIERS, default="cnn-fmnist", help="the image classifier")
    parser.add_argument("--int8", action="store_true", help="serve the classifier as a torch.ao int8 model")
    for field in dataclasses.fields(Limits):
        flag = "--" + field.name.removesuffix("_s").replace("_", "-")
        parser.add_argument(flag, dest=field.name, type=type(field.default), default=field.default,
                            help=LIMIT_HELP[field.name])  # fmt: skip
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    return parser


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper())
    limits = Limits(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Limits)})
    app = create_app(text_model(args.model), image_model(args.classifier, args.int8), limits)
    gc.collect()
    gc.freeze()  # the start-up's objects (torch, the model) leave the collector: a full collection pauses every request
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)


if __name__ == "__main__":
    main()
