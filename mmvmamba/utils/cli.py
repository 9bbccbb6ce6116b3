"""What the command lines of the analysis tools share: the options that name a model (a config file or VMamba
presets, its weights, the device), the one way to build that model, and the one table format of their results."""
from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch
import torch.nn as nn
from mmengine.config import DictAction

from .config import build_model, get_backbone, load_weights

ARCH_HELP = 'a VMamba preset (tiny, small, base, vanilla-tiny, ...) instead of a config'


def default_device() -> str:
    return 'cuda' if torch.cuda.is_available() else 'cpu'


def model_arguments(config_help: str, *, arch_help: str = ARCH_HELP, several_archs: bool = False,
                    checkpoint: bool = True, device: bool = True) -> argparse.ArgumentParser:
    """A parent parser (``ArgumentParser(parents=[...])``) with the options that name the model.

    ``config`` or ``--arch`` (several presets with ``several_archs``) with ``--arch-options``, and ``--cfg-options``;
    ``--checkpoint`` / ``--checkpoint-key`` and ``--device`` unless turned off. Parse with :func:`parse_model_args`.
    """
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument('config', nargs='?', help=config_help)
    parser.add_argument('--arch', nargs='+' if several_archs else None, help=arch_help)
    parser.add_argument('--arch-options', nargs='+', action=DictAction, default={},
                        help='overrides of the preset fields, e.g. depths=1,1,2,1 embed_dim=32')
    if checkpoint:
        parser.add_argument('--checkpoint', help="weights: the authors' checkpoint or an MMEngine one")
        parser.add_argument('--checkpoint-key', default='auto',
                            help="the state dict in the checkpoint: 'model', 'model_ema', 'state_dict' or auto")
    if device:
        parser.add_argument('--device', default=default_device(), help='cuda or cpu (default: cuda when available)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, help='override config settings, key=value')
    return parser


def parse_model_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None, *,
                     default_arch: str | list[str] | None = None) -> argparse.Namespace:
    """Parse ``argv`` (the command line when None) and check that it names one model: a config file or ``--arch``,
    not both; ``default_arch`` stands in when neither is given, which is an error without it."""
    args = parser.parse_args(argv)
    if args.config and args.arch:
        parser.error('give a config file or --arch, not both')
    if not args.config and not args.arch:
        if default_arch is None:
            parser.error('give a config file or --arch')
        args.arch = default_arch
    return args


def build_model_from_args(args: argparse.Namespace, *, num_classes: int | None = 1000,
                          backbone_only: bool = False) -> nn.Module:
    """The model that the parsed options name, without weights: the config's model, or the ``--arch`` preset as a
    classifier with ``num_classes`` outputs (None: the bare backbone); with ``backbone_only``, its backbone."""
    model = build_model(args.config, args.arch, cfg_options=args.cfg_options, arch_options=args.arch_options,
                        num_classes=None if backbone_only else num_classes)
    return get_backbone(model) if backbone_only else model


def load_weights_from_args(model: nn.Module, args: argparse.Namespace) -> None:
    """Load ``--checkpoint`` (when given) into ``model`` strictly and say what was loaded."""
    if args.checkpoint:
        print(f'loaded {load_weights(model, args.checkpoint, args.checkpoint_key)}')


def add_rounds_option(parser: argparse.ArgumentParser, measured: str) -> None:
    """``--rounds R``: ``measured`` are measured R times, taking turns, and each one's median reported."""
    parser.add_argument('--rounds', type=int, default=1,
                        help=f'measure {measured} this many times, taking turns, and report medians')


def format_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table with padded columns: a header row, a rule, and one row per entry of ``rows``."""
    cells = [[str(cell) for cell in row] for row in [header, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]

    def line(row: list[str]) -> str:
        return '| ' + ' | '.join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) + ' |'

    return '\n'.join([line(cells[0]), '|' + '|'.join('-' * (width + 2) for width in widths) + '|',
                      *map(line, cells[1:])])
