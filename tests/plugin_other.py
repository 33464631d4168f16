"""A second plugin module for the SEGZOO_PLUGINS selection tests."""

import segzoo


@segzoo.hookimpl
def register_models(register):
    register("other_model", backbone="resnet18", head="fcn", num_classes=2)
