"""The peer: python-dockercloud 1.0.12's `dockercloud.Events`, with a handler that only parses JSON.

Runs under bench/.venv-peer's interpreter (the SDK pins an old websocket-client, so it cannot
share eventd's venv). Reads DOCKERCLOUD_STREAM_HOST/USER/APIKEY from the environment as the
SDK does, counts messages, prints one JSON line and leaves with os._exit when N have arrived:
Events.run_forever() reconnects forever by design, so there is no clean way out of it.
"""

import json
import os
import sys
import time


def main() -> None:
    events_wanted = int(sys.argv[1])
    import dockercloud
    import websocket

    dockercloud.stream_host = os.environ["DOCKERCLOUD_STREAM_HOST"]
    count = [0]
    first = [None]

    def on_message(message):
        json.loads(message)
        count[0] += 1
        if count[0] == 1:
            first[0] = time.time()
        if count[0] >= events_wanted:
            print(json.dumps({"client": "peer", "events": count[0], "t_first": first[0],
                              "t_done": time.time(),
                              "websocket_client": getattr(websocket, "__version__", "?")}))
            sys.stdout.flush()
            os._exit(0)

    stream = dockercloud.Events()
    stream.on_message(on_message)
    stream.run_forever()


if __name__ == "__main__":
    main()
