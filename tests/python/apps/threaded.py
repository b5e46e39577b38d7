"""An app that starts a thread when imported (a metrics exporter, a connection pool warming
up): with preload=on the adapter warns that the workers will not have it."""
import threading
import time

threading.Thread(target=lambda: time.sleep(3600), daemon=True, name="background").start()


def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [f"{threading.active_count()} threads\n".encode()]
