"""dermkit data shards: image-caption pairs of a dataset card (or CSV) as WebDataset tar shards."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

console = Console()


def register(app: typer.Typer, groups: dict) -> None:
    groups["data"].command("shards")(data_shards)


def data_shards(
    source: str = typer.Argument(..., metavar="CARD_OR_CSV",
                                 help="A dataset (known name, folder or its metadata.csv: the rows of --split, "
                                      "captions from a 'caption' column or written from metadata) or a CSV with "
                                      "'image' (relative to the CSV's folder) and 'caption' columns (every row)."),
    out: Path = typer.Option(..., help="Folder for the shards (000000.tar, ...) and manifest.json; must be new or "
                                       "empty unless --force."),
    split: str = typer.Option("train", help="Split of a dataset card to write (train, val or test)."),
    maxcount: int = typer.Option(10_000, min=1, help="Most samples per shard."),
    maxsize_mb: float = typer.Option(1000.0, min=0.001, help="Megabytes per shard: a shard closes once its files "
                                                            "reach this size (tar headers not counted)."),
    captions_per_image: int = typer.Option(1, min=1, help="Metadata-caption variants stored per image: variant k "
                                                          "is the caption the contrastive method draws in epoch k "
                                                          "(a 'caption' column gives one)."),
    caption_seed: int = typer.Option(0, help="Seed of the metadata captions (the contrastive method's caption_seed)."),
    second_view: bool = typer.Option(True, "--second-view/--no-second-view",
                                     help="Add the card's second view (e.g. Derm7pt's clinical photos) as pairs of "
                                          "its own, as the contrastive method does."),
    force: bool = typer.Option(False, "--force", help="Replace a non-empty --out folder (after all shards are "
                                                      "written)."),
) -> None:
    """Write image-caption pairs as WebDataset tar shards (image bytes as stored, caption, typed metadata JSON)
    for `dermkit clip-train --shards` / `shards:` in a contrastive config.

    Every image is checked first: a missing or unreadable one refuses the card, naming its
    metadata.csv line, and nothing is written (shards go to a temporary folder renamed at the end).
    """
    from dermkit.data.shards import write_shards

    manifest = write_shards(source, out, split=split, maxcount=maxcount, maxsize=maxsize_mb * 1e6,
                            captions_per_image=captions_per_image, caption_seed=caption_seed,
                            second_view=second_view, force=force, progress=True)
    size = sum(s["bytes"] for s in manifest["shards"]) / 1e6
    console.print(f"wrote {manifest['samples']} image-caption pairs in {len(manifest['shards'])} shards "
                  f"({size:.1f} MB) to {out}")
    console.print(f"train on them: dermkit clip-train --shards '{out}/{manifest['pattern']}' --out RUN "
                  "(or shards: in a contrastive config)", soft_wrap=True)
