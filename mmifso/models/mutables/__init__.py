from .mutable_channel_unit import MutableChannelUnit

__all__ = ['MutableChannelUnit']
