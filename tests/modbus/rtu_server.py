#!/usr/bin/env python3
"""A Modbus RTU server from another project, for tests/modbus.rs.

pymodbus (pinned in tests/interop/requirements.txt), serving several unit
ids on one serial device, with the register and bit values a test wrote
itself. Unit ids not in the spec get no answer at all, as on a bus where
that slave is absent.

usage: rtu_server.py DEVICE SPEC

SPEC is JSON:
  {"baud": 9600,
   "pace_bits": 11,
   "units": {"1": {"holding": [u16, ...], "input": [...],
                   "coil": [true, ...], "discrete": [...],
                   "delay": 0.0, "garbage": false}},
   "echo": false}
Each table's values start at protocol address 0; reading past them is an
exception 2 (illegal data address). "delay" (seconds) holds that unit's
answers back, as a slow slave would; with "garbage", its answers arrive
with a wrong CRC, as through line noise. With "echo", every request comes
back to the sender as it arrives, before any answer, as on an RS-485 bus
whose transceiver's receiver stays enabled while the gateway sends. With "pace_bits", an answer is held
back as long as a real bus would take: the request's 8 characters, the
silence between frames (3.5 characters; 1.75 ms above 19200 baud, as the
Modbus serial line specification fixes it) and the answer's characters,
at "baud" with that many bits a character (a PTY has no baud rate: it
moves bytes at once).
Prints "ready" once serving.
"""
import asyncio
import json
import logging
import sys
import time

from pymodbus.datastore import (
    ModbusDeviceContext,
    ModbusSequentialDataBlock,
    ModbusServerContext,
)
from pymodbus.server import ModbusSerialServer
from pymodbus.transport.serialtransport import SerialTransport


def device(spec):
    # ModbusDeviceContext adds 1 to every address it is asked for: a block
    # starting at 1 holds protocol address 0.
    def block(name, default):
        return ModbusSequentialDataBlock(1, spec.get(name) or [default])

    return ModbusDeviceContext(
        hr=block("holding", 0),
        ir=block("input", 0),
        co=block("coil", False),
        di=block("discrete", False),
    )


def pace_answers(delays, garbage, char_time, gap):
    """Holds back the answers of the units in `delays` (unit id: seconds),
    and every answer by its time on a real bus (`char_time` seconds a
    character and a `gap` between frames, 0 for none), counted from when
    the request arrived, so that the server's own work is not added to it;
    spoils the CRC of the answers of the units in `garbage`. The first byte
    of an RTU frame is its unit id."""
    write = SerialTransport.write

    def paced(self, data):
        if data and data[0] in garbage:
            data = data[:-1] + bytes([data[-1] ^ 0xFF])
        seconds = delays.get(data[0], 0.0) if data else 0.0
        seconds += (8 + len(data)) * char_time + gap
        if seconds <= 0:
            write(self, data)
            return
        at = getattr(self, "request_at", time.monotonic()) + seconds

        def on_time():
            # The event loop's timers are a millisecond coarse: the last
            # stretch is waited out here.
            while time.monotonic() < at:
                pass
            write(self, data)

        self.async_loop.call_later(max(0.0, at - time.monotonic() - 0.002), on_time)

    SerialTransport.write = paced


def note_requests(echo):
    """Notes when each request's bytes arrived; with `echo`, sends every
    byte received straight back."""
    read_ready = SerialTransport.intern_read_ready

    def reading(self):
        port = self.sync_serial
        real_read = port.read

        def read(size):
            data = real_read(size)
            if data:
                self.request_at = time.monotonic()
                if echo:
                    port.write(data)
            return data

        port.read = read
        try:
            read_ready(self)
        finally:
            port.read = real_read

    SerialTransport.intern_read_ready = reading


async def main():
    path, spec = sys.argv[1], json.loads(sys.argv[2])
    logging.basicConfig(level=logging.ERROR)
    units = {int(u): s for u, s in spec["units"].items()}
    baud = spec.get("baud", 9600)
    pace = spec.get("pace_bits", 0)
    char_time = pace / baud if pace else 0.0
    gap = 0.0 if not pace else 0.00175 if baud > 19200 else 3.5 * char_time
    pace_answers(
        {u: float(s.get("delay", 0.0)) for u, s in units.items()},
        {u for u, s in units.items() if s.get("garbage")},
        char_time,
        gap,
    )
    note_requests(bool(spec.get("echo")))
    context = ModbusServerContext(
        devices={u: device(s) for u, s in units.items()}, single=False
    )
    server = ModbusSerialServer(
        context,
        port=path,
        baudrate=baud,
        ignore_missing_devices=True,
    )
    await server.serve_forever(background=True)
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
