"""``recis.hooks.hook.Hook``: the base class of training hooks (§1.8).

The Trainer calls only ``after_step(metrics, global_step)`` and ``end()``; the other methods
exist for API compatibility and are never called.
"""


class Hook:
    """No-op hook; subclasses override ``after_step(metrics, global_step)`` and/or ``end()``."""

    def before_train(self, *args, **kwargs):
        pass

    def after_train(self, *args, **kwargs):
        pass

    def before_evaluate(self, *args, **kwargs):
        pass

    def after_evaluate(self, *args, **kwargs):
        pass

    def before_epoch(self, *args, **kwargs):
        pass

    def after_epoch(self, *args, **kwargs):
        pass

    def before_step(self, *args, **kwargs):
        pass

    def after_step(self, *args, **kwargs):
        pass

    def end(self, *args, **kwargs):
        pass
