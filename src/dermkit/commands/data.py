"""dermkit data: check and split a dataset card, import official releases (and any class folders or CSV)
as cards, fetch releases, write image-caption pairs as WebDataset shards."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from dermkit.commands.common import console, err_console
from dermkit.errors import DataError

_KINDS_HELP = ("ham10000, isic2017, isic2018, isic2019, isic2020, ph2, derm7pt, pad_ufes20, bcn20000, milk10k, "
               "fitzpatrick17k, ddi, scin, folder (one subfolder per class) or csv (folder/csv: DICOM files become "
               "PNG in the card).")


def register(app: typer.Typer, groups: dict) -> None:
    groups["data"].command("check")(data_check)
    groups["data"].command("split")(data_split)
    groups["data"].command("import")(data_import)
    groups["data"].command("fetch")(data_fetch)
    groups["data"].command("shards")(data_shards)
    groups["data"].command("audit")(data_audit)
    groups["data"].command("sheet")(data_sheet)


def data_check(
    dataset: str = typer.Argument(..., help="A known dataset name (ham10000, derm7pt, ph2, isic2017, pad_ufes20; "
                                            "resolved under $DERMKIT_DATA) or a folder with metadata.csv."),
    images: bool = typer.Option(True, "--images/--no-images", help="Decode every image (finds missing, truncated, "
                                                                   "unreadable files and decompression bombs)."),
    follow_symlinks: bool = typer.Option(False, "--follow-symlinks", help="Allow image paths that lead out of the "
                                         "folder through a symlink (e.g. images/ linked to an image store), for "
                                         "this check; 'follow_symlinks: true' in dataset.yaml allows it always."),
    sheet: bool = typer.Option(False, "--sheet", help="Also print the dataset's datasheet (`dermkit data sheet`)."),
    embeddings: bool = typer.Option(True, "--embeddings/--no-embeddings", help="Also look for near-duplicates "
                                    "across splits in the embeddings that the dataset's last `dermkit data audit` "
                                    "cached (crops, flips, colour shifts that perceptual hashes miss); nothing is "
                                    "computed, and a dataset never audited is checked by hashes only."),
) -> None:
    """Validate a dataset folder and print images per class and split, and metadata coverage.

    Exits with status 2 and names the CSV line and the fix for every problem found.
    """
    from dermkit.data import check_dataset, load_card

    card = load_card(dataset)
    result = check_dataset(card, check_images=images, progress=True, follow_symlinks=follow_symlinks or None)
    if images and embeddings:
        _embedding_leaks(card, result)
    console.print(f"[bold]{card.name}[/bold]  {card.root}")
    console.print(_frame_table(result.summary.reset_index(), "images per class and split"))
    if result.extra.get("exclusion_note"):
        console.print(f"[cyan]info[/cyan] {escape(result.extra['exclusion_note'])} (counted above; left out by "
                      "every command that trains or evaluates)", soft_wrap=True)
    if result.extra.get("embedding_check"):
        console.print(f"[cyan]info[/cyan] {escape(result.extra['embedding_check'])}", soft_wrap=True)
    if result.metadata_coverage is not None and len(result.metadata_coverage):
        console.print(_frame_table(result.metadata_coverage, "metadata coverage"))
    if sheet:
        from dermkit.data.datasheet import datasheet, datasheet_markdown

        console.print(datasheet_markdown(datasheet(card)), markup=False, highlight=False, soft_wrap=True)
    errors = [p for p in result.problems if p.severity == "error"]
    warnings = [p for p in result.problems if p.severity != "error"]
    for p in warnings:
        err_console.print(f"[yellow]warning[/yellow] {_problem_text(p)}")
    for p in errors:
        err_console.print(f"[red]error[/red] {_problem_text(p)}")
    if errors:
        err_console.print(f"[red]{len(errors)} error(s)[/red] in {card.root / 'metadata.csv'}")
        raise typer.Exit(2)
    console.print(f"[green]ok[/green]: {len(card.table)} rows, {len(warnings)} warning(s)")


def _embedding_leaks(card, result) -> None:
    """Add the cross-split near-duplicates of the audit's cached embeddings to ``result``."""
    from dermkit.data.validate import Problem
    from dermkit.engine.audit import embedding_leaks

    found = embedding_leaks(card)
    if found is None:
        return
    hashed = {(p.csv_line, p.column) for p in result.problems if p.kind == "near_duplicate_leak"}
    for a, b, cosine in found.pairs:
        if (a["csv_line"], "image") in hashed:
            continue  # the perceptual hashes found this pair already
        result.problems.append(Problem(
            "near_duplicate_leak",
            f"{card.metadata_csv.name}: near-duplicate images in different splits (embeddings of {found.model}: each "
            f"the other's nearest image, cosine {cosine:.4f} >= the audit's cut-off {found.cutoff:.4f}): line "
            f"{a['csv_line']} image {a['image']!r} ({a['split']}) and line {b['csv_line']} image {b['image']!r} "
            f"({b['split']})",
            "look at both: if they show one lesion, give them one group id or keep one copy (`dermkit data split "
            "--force` keeps groups in one split); if they do not, `--no-embeddings` skips this check",
            int(a["csv_line"]), "image"))
    result.extra["embedding_check"] = (f"embedding check: {found.images} of {found.of} images had cached "
                                       f"{found.model} embeddings from the last `dermkit data audit`; "
                                       f"{len(found.pairs)} cross-split pair(s) at or above its cut-off")


def _problem_text(p) -> str:
    return escape(f"[{p.kind}] {p.message} Fix: {p.fix}")  # messages already name the metadata.csv line


def _frame_table(frame, title: str) -> Table:
    table = Table(*[str(c) for c in frame.columns], title=title)
    for row in frame.itertuples(index=False):
        table.add_row(*[_fmt(v) for v in row])
    return table


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.1f}" if value != int(value) else str(int(value))
    return str(value)


def data_split(
    dataset: str = typer.Argument(..., help="Dataset folder (or known name) whose metadata.csv gets a 'split' column."),
    seed: int = typer.Option(0, help="Random seed; the same seed gives the same split."),
    train: float = typer.Option(0.70, help="Fraction of groups for train."),
    val: float = typer.Option(0.15, help="Fraction for val."),
    test: float = typer.Option(0.15, help="Fraction for test."),
    group_column: Optional[str] = typer.Option(None, help="Column whose rows must stay together (lesion/patient id). "
                                                          "Default: the card's group column."),
    out: Optional[Path] = typer.Option(None, help="Write the new CSV here instead of replacing metadata.csv."),
    force: bool = typer.Option(False, help="Replace an existing non-empty split column."),
) -> None:
    """Make stratified, group-aware train/val/test splits (deterministic for a seed)."""
    from dermkit.data import load_card
    from dermkit.data.split import write_split

    card = load_card(dataset)
    path = write_split(card, out_csv=out, seed=seed, fractions=(train, val, test), group=group_column, force=force)
    console.print(f"wrote splits to {path}")


def _report(result) -> None:
    summary = result.check.summary.reset_index()
    table = Table(title=f"{result.name}: images per class and split")
    for col in summary.columns:
        table.add_column(str(col), justify="left" if col == summary.columns[0] else "right")
    for row in summary.itertuples(index=False):
        table.add_row(*(str(v) for v in row))
    console.print(table)
    for note in result.notes:
        console.print(f"- {note}")
    console.print(f"- split: {result.split_source}")
    for p in result.check.warnings:
        err_console.print(f"warning [{p.kind}] {p.message}", highlight=False, markup=False)
    for p in result.check.errors:  # only the official split's own leaks get this far (see the notes)
        err_console.print(f"official split [{p.kind}] {p.message}", highlight=False, markup=False)
    checked = ("`dermkit data check` passed" if result.check.ok else
               f"`dermkit data check` reports {len(result.check.errors)} leak(s) of the official split")
    console.print(f"[green]ok[/green]: card written to {result.root} (metadata.csv + dataset.yaml), {checked}; "
                  f"use --data {result.root}")


def data_import(
    kind: str = typer.Argument(..., help=f"What to import: {_KINDS_HELP}"),
    source: Path = typer.Option(..., "--from", help="The release as downloaded: its folder or official zip (for "
                                                    "csv: the CSV file)."),
    out: Path = typer.Option(..., help="Folder to write the dataset card to (metadata.csv, dataset.yaml, images/); "
                                       "must be new or empty unless --force."),
    split: str = typer.Option("official", help="official: keep the release's split where it has one (ISIC 2017/2018, "
                                               "Derm7pt), else a grouped stratified split; grouped: always make one "
                                               "(the official one stays in official_split)."),
    seed: int = typer.Option(0, help="Seed of the grouped stratified split (same seed, same split)."),
    force: bool = typer.Option(False, "--force", help="Replace a non-empty --out folder (after the new card passed "
                                                      "its check)."),
    copy: bool = typer.Option(False, "--copy", help="Copy images from a release folder instead of hard-linking them."),
    images: bool = typer.Option(True, "--images/--no-images", help="Decode every image in the final data check."),
    name: Optional[str] = typer.Option(None, help="folder/csv: the card's name (default: the folder/CSV name)."),
    image_column: Optional[str] = typer.Option(None, help="csv: column with image paths (relative to --image-root)."),
    label_column: Optional[str] = typer.Option(None, help="csv: column with the class of each image."),
    image_root: Optional[Path] = typer.Option(None, help="csv: folder the image paths are relative to (default: the "
                                                         "CSV's folder)."),
    group_column: Optional[str] = typer.Option(None, help="csv: lesion/patient id column; its rows stay in one split."),
    split_column: Optional[str] = typer.Option(None, help="csv: column with train/val/test per row (else dermkit "
                                                          "makes the split)."),
) -> None:
    """Import an official dataset release (or class folders, or any CSV) as a checked dataset card.

    Reads the official metadata in the official layout, maps its columns and codes to the packaged
    card's, keeps the official split where one exists, writes metadata.csv + dataset.yaml and runs
    the full `dermkit data check`; the card appears in --out only when the check passes.
    """
    from dermkit.data.releases import KINDS, RELEASES, import_csv, import_folder, import_release

    common = dict(seed=seed, force=force, link=not copy, check_images=images, progress=sys.stderr.isatty())
    csv_only = {"--image-column": image_column, "--label-column": label_column, "--image-root": image_root,
                "--group-column": group_column, "--split-column": split_column}
    if kind not in KINDS:
        raise DataError(f"unknown kind {kind!r} for `data import`; use one of {', '.join(KINDS)}")
    if kind != "csv":
        given = [k for k, v in csv_only.items() if v is not None]
        if given:
            raise DataError(f"{', '.join(given)} only apply to `data import csv`")
    if kind in RELEASES:
        if name is not None:
            raise DataError(f"--name only applies to `data import folder` and `data import csv`; {kind} keeps its name")
        result = import_release(kind, source, out, split=split, **common)
    elif kind == "folder":
        result = import_folder(source, out, name=name, **common)
    else:
        if image_column is None or label_column is None:
            raise DataError("`data import csv` needs --image-column and --label-column (the CSV's image-path and "
                            "class columns)")
        result = import_csv(source, out, image_column=image_column, label_column=label_column, image_root=image_root,
                            group_column=group_column, split_column=split_column, name=name, **common)
    _report(result)


def data_fetch(
    name: str = typer.Argument(..., help="Release to download: ham10000, isic2017, isic2018, isic2019, isic2020, "
                                         "pad_ufes20, ph2, scin (its CSVs), fitzpatrick17k (the CSV and its listed "
                                         "images); derm7pt, ddi, bcn20000 and milk10k are downloaded by hand: the "
                                         "command says where."),
    out: Optional[Path] = typer.Option(None, help="Import the verified download as a dataset card into this folder."),
    cache: Optional[Path] = typer.Option(None, help="Download folder (default $DERMKIT_CACHE/downloads, else "
                                                    "~/.cache/dermkit/downloads); files land in CACHE/NAME/."),
    accept_licence: bool = typer.Option(False, "--accept-licence", help="Acknowledge the release's licence and terms "
                                                                         "(shown otherwise; asked for on a terminal)."),
    record_checksums: bool = typer.Option(False, "--record-checksums", help="For files whose source publishes no "
                                          "checksum: download them and record their SHA-256 in CACHE/NAME/SHA256SUMS; "
                                          "later fetches must match it."),
    manifest: Optional[Path] = typer.Option(None, help="Another manifest.yaml (a mirror); default: the packaged one."),
    split: str = typer.Option("official", help="Passed to the import (official | grouped)."),
    seed: int = typer.Option(0, help="Passed to the import (seed of a grouped split)."),
    force: bool = typer.Option(False, "--force", help="Replace a non-empty --out folder."),
    threads: int = typer.Option(4, min=1, max=4, help="Releases that list image URLs (fitzpatrick17k): images "
                                                      "downloaded at a time (at most 4, to be polite)."),
    retry_dead: bool = typer.Option(False, "--retry-dead", help="Releases that list image URLs: ask again for the "
                                    "images an earlier fetch found gone for good (HTTP 404/410, not an image)."),
) -> None:
    """Download an official release with checksums (resumable), show its licence, then import it.

    Files are streamed into CACHE/NAME/.partial/, resumed with HTTP range requests after an
    interruption, verified (size, SHA-256 or the digest the source publishes) and only then moved
    to CACHE/NAME/; a file that fails verification is deleted.
    """
    from dermkit.data.fetch import fetch, licence_text, load_manifest, release_entry

    entry = release_entry(name, load_manifest(manifest))
    if not accept_licence and entry.get("access") != "registration" and sys.stdin.isatty():
        console.print(licence_text(name, entry), highlight=False, markup=False)
        accept_licence = typer.confirm("Do you accept these terms?", default=False)
    result = fetch(name, out, cache=cache, accept_licence=accept_licence, record_checksums=record_checksums,
                   manifest=manifest, progress=sys.stderr.isatty(),
                   import_options={"split": split, "seed": seed, "force": force},
                   image_options={"threads": threads, "retry_dead": retry_dead})
    for path in result.files:
        console.print(f"verified {path}  sha256 {result.sha256[path.name]}", highlight=False)
    if result.images is not None:
        console.print(f"images: {result.images.summary()}", highlight=False, markup=False)
    if result.imported is not None:
        _report(result.imported)
    else:
        console.print(f"downloaded into {result.folder}; import with `dermkit data import {name} --from "
                      f"{result.folder} --out DIR`")


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


def data_audit(
    dataset: str = typer.Argument(..., help="A known dataset name or a folder with metadata.csv."),
    out: Path = typer.Option(..., help="Output folder: near_duplicates.csv, off_topic.csv, label_issues.csv, "
                                       "audit.json and audit.html."),
    model: str = typer.Option("efficientnet_lite0", help="Image encoder for the embeddings (any model string: "
                                                         "timm:ARCH, a CLIP folder, hf-hub:...); cached by content "
                                                         "hash like every feature."),
    splits: Optional[str] = typer.Option(None, help="Splits to audit, separated by commas (default: all)."),
    folds: int = typer.Option(5, help="Lesion-grouped folds of the out-of-fold probe for label issues."),
    top: int = typer.Option(25, help="Rows of each list shown with thumbnails in audit.html."),
    cache_dir: Optional[Path] = typer.Option(None, help="Feature cache folder (default $DERMKIT_CACHE/features)."),
    device: str = typer.Option("cpu", help="cpu | cuda | cuda:N."),
    confirm: bool = typer.Option(False, "--confirm", help="Write the flagged images (off-topic, label issues and the "
                                 "later image of each near-duplicate pair across splits) to DATA/audit/excluded.csv "
                                 "and set 'exclude: audit/excluded.csv' in DATA/dataset.yaml: every command then "
                                 "leaves them out (entries already listed are kept)."),
) -> None:
    """Find near-duplicates (and leaks across splits), off-topic images and label issues.

    Near-duplicate pairs come from perceptual hashes (resized, re-encoded, mirrored copies) and
    from image embeddings (crops, colour shifts), ranked by one score; each pair says whether it
    crosses splits and whether the two share a lesion id. Off-topic images are ranked by their
    isolation in the embedding space; label issues by Confident Learning (cleanlab) on
    out-of-fold probabilities of a probe on the embeddings. An interrupted audit resumes from its
    cached embeddings. Open OUT/audit.html to confirm or reject the top of each list by eye;
    --confirm turns the flagged rows into the card's exclusion list.
    """
    from dermkit.engine.audit import confirm_exclusions, run_audit

    if folds < 2:
        raise DataError(f"--folds must be >= 2, got {folds}")
    if top < 1:
        raise DataError(f"--top must be >= 1, got {top}")
    chosen = [s.strip() for s in splits.split(",") if s.strip()] if splits else None
    summary = run_audit(dataset, out, model=model, splits=chosen, cache_dir=cache_dir, device=device, folds=folds,
                        top=top, progress=True)
    nd, ot, li = summary["near_duplicates"], summary["off_topic"], summary["label_issues"]
    console.print(f"[bold]{summary['dataset']}[/bold]: {summary['images']} images audited in {summary['seconds']} s")
    console.print(f"near-duplicate pairs: {nd['flagged_pairs']} flagged, {nd['cross_split']} across splits "
                  f"({nd['cross_split_hidden']} without a shared lesion id)")
    console.print(f"off-topic images: {ot['flagged']} flagged")
    console.print(f"label issues: {li['flagged']} flagged ({li['rate']:.1%})")
    console.print(f"report: {Path(out) / 'audit.html'}")
    if confirm:
        path, count = confirm_exclusions(dataset, out)
        console.print(f"exclusion list: {count} image(s) in {path}; dataset.yaml says 'exclude: {path.parent.name}/"
                      f"{path.name}' (every command leaves them out; delete lines to keep an image)", soft_wrap=True)


def data_sheet(
    dataset: str = typer.Argument(..., help="A known dataset name (ham10000, derm7pt, ph2, isic2017, pad_ufes20; "
                                            "resolved under $DERMKIT_DATA) or a folder with metadata.csv."),
    out: Optional[Path] = typer.Option(None, help="Also write datasheet.md, datasheet.html and datasheet.json "
                                                  "into this folder."),
) -> None:
    """Print the dataset's datasheet: the CLEAR Derm data items computed from its card.

    Image type, licence, label source (e.g. HAM10000's dx_type) and its share, class counts per
    split, partition level, Fitzpatrick / Monk skin type, age, sex and body site, declared
    duplicates and the exclusion list. Reads metadata.csv only (no image is decoded).
    """
    from rich.markdown import Markdown

    from dermkit.data import load_card
    from dermkit.data.datasheet import datasheet, datasheet_markdown, save_datasheet

    card = load_card(dataset)
    sheet = datasheet(card)
    text = datasheet_markdown(sheet)
    if console.is_terminal:
        console.print(Markdown(text))
    else:
        console.print(text, markup=False, highlight=False, soft_wrap=True)
    if out is not None:
        for path in save_datasheet(card, out, sheet).values():
            console.print(f"wrote {path}", highlight=False, soft_wrap=True)
