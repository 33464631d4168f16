"""A plugin module loaded through a fake entry point in the plugin tests."""

import segzoo


@segzoo.hookimpl
def register_models(register):
    register("good_model", backbone="resnet18", head="fcn", num_classes=2)
