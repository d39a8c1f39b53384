"""`sqref study replicate`: the LeNet-5 rules again, on LeNet-5s trained from other seeds."""
from __future__ import annotations

from sqref import zoo
from sqref.compress import FINETUNE_DISTILL, distill_kwargs, factor_model, finetune
from sqref.data import load_split
from sqref.model import predict
from sqref.progress import Progress
from sqref.qmodel import quantize_model
from sqref.studies.common import HEADER, table_row, tick
from sqref.studies.finetune import FINETUNE_SETTINGS, keep_text, method_text
from sqref.studies.paper import PER_LAYER_RULES, paper_rank_row, per_layer_bits_row
from sqref.train import train

REPLICATE_SEEDS = (1, 2, 3, 4)


def replicate_study(progress=False) -> str:
    """The LeNet-5 results again, on LeNet-5s trained with the shipped recipe
    from other seeds. No rule, setting or method was chosen on these models,
    so their test drops are an out-of-sample check of the rules themselves."""
    x, y = load_split(split="test")
    train_xy, val = load_split(split="train"), load_split(split="val")
    rank20, spec, epochs = FINETUNE_SETTINGS["lenet5"]
    recipe = zoo.RECIPES["lenet5"]
    # cells: per seed, the training epochs, the two post-training rows, the fine-tuning epochs
    bar = Progress(len(REPLICATE_SEEDS) * (recipe["epochs"] + 2 + epochs), "replicate (epochs and rows)",
                   enabled=progress)
    lines = ["## Replication on independently trained LeNet-5s", "",
             "Command: `sqref study replicate`. Each model is trained by `sqref train --arch lenet5 --seed S` "
             "(the shipped model's recipe, another seed). The rules and settings above are applied unchanged: "
             "the paper's (8 bits, smallest rank within 0.5 points on validation), the post-training rule "
             f"\"{PER_LAYER_RULES[1]}\", and fine-tuning with the shipped "
             f"method ({method_text()}; rank {rank20}, bits {spec}, {epochs} epochs, the {keep_text()}, "
             "fine-tuning seed 0). No rule or setting was chosen on these models; but the fine-tuning keep rule "
             "and bits were revised after the results of seeds 1 and 2 had been seen (docs/results.md), and "
             "seeds 3 and 4 were added after that revision.", ""] + HEADER
    for seed in REPLICATE_SEEDS:
        name = f"lenet5 seed {seed}"
        model, _ = train(zoo.lenet5(seed), train_xy, val, seed=seed, on_epoch=lambda epoch, m: tick(bar), **recipe)
        float_preds = predict(model, x)
        lines.append(paper_rank_row(name, model, val, float_preds, x, y, label="paper: 8 bits"))
        tick(bar)
        lines.append(per_layer_bits_row(name, model, PER_LAYER_RULES[1], val, float_preds, x, y))
        tick(bar)
        qkw = dict(bits=spec, rule="dynamic", bias_bits=16)
        tuned, _ = finetune(factor_model(model, rank=rank20)[0], train_xy, val, epochs=epochs, quantize_kwargs=qkw,
                            seed=0, on_epoch=lambda epoch, m: tick(bar), **distill_kwargs(model, FINETUNE_DISTILL))
        lines.append(table_row(name, model, quantize_model(tuned, **qkw), float_preds, x, y,
                               f"fine-tuned: rank {rank20}; bits {spec}; {epochs} epochs"))
    bar.close()
    return "\n".join(lines) + "\n"
