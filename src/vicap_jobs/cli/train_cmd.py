"""``vicap-jobs train``: train a model in this process and register it."""

from __future__ import annotations

from typing import Any

import click

from vicap_jobs.cli.common import console, open_store
from vicap_jobs.cli.train_options import describe_inputs, options_from_cli, train_arguments
from vicap_jobs.services.training import create_train_job, train_in_process


@click.command()
@train_arguments
def train(**values: Any) -> None:
    """Train model NAME on a data set here and now, and register it (tracked as a train job).

    CNN+LSTM families train a torchvision backbone (--backbone); the vision-language
    families start from local Hugging Face folders (never downloaded): clipcap and
    vit-seq2seq take --vision-model and --text-model, blip and blip2-lora --base-model.
    Their text side is --tokenizer train (a byte-level BPE learned on the train captions,
    keeps every diacritic) or a local tokenizer folder; --set key=value sets a family
    option. To run it on a worker instead, use `vicap-jobs submit train` with the same options.

    Example:

    \b
        vicap-jobs train synth-attn --family cnn-lstm-attn --backbone tiny --dataset viic-synth --epochs 12
        vicap-jobs train uit-dn201 --family cnn-lstm-attn --backbone densenet201 --dataset uitviic \\
            --backbone-weights densenet201.pth --lr 5e-4
        vicap-jobs train uit-blip --family blip --base-model ~/hf/blip-image-captioning-base --dataset uitviic \\
            --lr 5e-5 --batch-size 16 --device cuda
        vicap-jobs train uit-clipcap --family clipcap --vision-model ~/hf/clip-vit-base-patch32 \\
            --text-model ~/hf/gpt2-vietnamese --dataset uitviic --set mapping_type=transformer --set prefix_length=10
        vicap-jobs train uit-vit-bartpho --family vit-seq2seq --vision-model ~/hf/vit-base-patch16-224-in21k \\
            --text-model ~/hf/bartpho-syllable --dataset uitviic --frozen-backbone
        vicap-jobs train uit-blip2 --family blip2-lora --base-model ~/hf/blip2-opt-2.7b --dataset uitviic \\
            --set lora_r=16 --set lora_targets=q_proj,k_proj --grad-accum 4 --device cuda
    """

    name, family, dataset, options = options_from_cli(values)
    _, db = open_store()
    job_id = create_train_job(db=db, name=name, family=family, dataset=dataset, options=options)
    console.print(f"train job {job_id}: {family} / {describe_inputs(options)} on {dataset}")
    outcome = train_in_process(db=db, job_id=job_id)
    console.print(f"model {name!r} registered ({outcome.message})")
    console.print(
        f"next: vicap-jobs export onnx {name}  ·  vicap-jobs evaluate --model {name} --dataset {dataset} --split test"
    )
