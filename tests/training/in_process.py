"""Short training runs inside the test process (one gloo rank; use the one_process fixture)."""

from megastack.training.arguments import build_pretrain_config, parse_args
from megastack.training.trainer import Trainer


def build(argv: list[str], **kwargs) -> tuple[Trainer, object]:
    """A Trainer for `python -m megastack.pretrain argv` (not yet set up) and its tokenizer."""
    from megastack.pretrain import build_tokenizer_from_args

    args = parse_args(argv)
    tokenizer = build_tokenizer_from_args(args)
    return Trainer(build_pretrain_config(args, tokenizer.vocab_size), args, **kwargs), tokenizer


def train(argv: list[str], **kwargs) -> Trainer:
    """Set up, train, save where the run ends (as megastack.pretrain does) and close."""
    trainer, tokenizer = build(argv, **kwargs)
    trainer.setup(tokenizer)
    trainer.train()
    if trainer.cfg.checkpoint.save and trainer.last_saved_iteration != trainer.state.iteration:
        trainer.save()
    trainer.close()
    return trainer
