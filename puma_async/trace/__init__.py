"""Traces: a party's view of a session written to a file, and the party run again from it.

- :mod:`.format`: the file format (header, records, trailer), :class:`~.format.TraceWriter`
  and :func:`~.format.read_trace`;
- :mod:`.recorder`: :class:`~.recorder.RecordingTransport`, which wraps any transport and
  records its frames;
- :mod:`.replayer`: :class:`~.replayer.ReplayTransport`, which plays a recorded party's peers
  and checks what the party sends, and :func:`~.replayer.watch_for_deadlock`;
- :mod:`.divergence`: where and how a replay first differs, without secret values;
- :mod:`.timeline`: an SVG of the frames per link, coloured by the scope that sent them.

The command line is :mod:`puma_async.replay`. **A trace holds key material and secret
shares**: it is written 0600 and must be kept like a private key.
"""
