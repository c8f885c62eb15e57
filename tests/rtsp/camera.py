#!/usr/bin/python3
"""An IP camera for fieldlink's tests and benchmark: GStreamer's RTSP server on 127.0.0.1.

Mounts (each only when its source is given or is live):
  /live     H.264 from a live test picture (x264, zerolatency), shared by all clients
  /mjpeg    MJPEG (jpegenc ! rtpjpegpay) from a live test picture, shared
  /h264     an MP4 file's H.264 as it is (--h264 FILE), from its start for each client
  /h265     an MP4 file's H.265 as it is (--h265 FILE), from its start for each client
The file mounts send SPS/PPS (and VPS) only in the SDP, as many cameras do.
With --auth digest|basic every mount needs authentication (--user/--password); GStreamer
challenges only clients that have no default token, so it is all mounts or none.
Prints "READY <port>" once listening; stops on SIGTERM/SIGINT.
Needs Debian's gstreamer1.0-rtsp, gir1.2-gst-rtsp-server-1.0 and python3-gi.
"""
import argparse
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtsp", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtsp, GstRtspServer  # noqa: E402


def factory(launch, shared, roles):
    f = GstRtspServer.RTSPMediaFactory()
    f.set_launch(launch)
    f.set_shared(shared)
    if roles == ["anonymous"]:
        return f
    for role in roles:
        f.add_role_from_structure(
            Gst.Structure.new_from_string(
                f"{role}, media.factory.access=(boolean)true, "
                "media.factory.construct=(boolean)true"
            )
        )
    return f


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--size", default="640x360", help="live picture size, WxH")
    p.add_argument("--fps", type=int, default=25)
    p.add_argument("--kbps", type=int, default=1500, help="live H.264 bitrate")
    p.add_argument("--h264", help="MP4 file with H.264 for /h264")
    p.add_argument("--h265", help="MP4 file with H.265 for /h265")
    p.add_argument("--auth", choices=["digest", "basic"], help="authentication on every mount")
    p.add_argument("--user", default="admin")
    p.add_argument("--password", default="secret")
    a = p.parse_args()
    w, h = (int(x) for x in a.size.split("x"))

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(a.port))

    role = "anonymous"
    if a.auth:
        auth = GstRtspServer.RTSPAuth()
        user = GstRtspServer.RTSPToken()
        user.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, "user")
        if a.auth == "digest":
            auth.add_digest(a.user, a.password, user)
            auth.set_supported_methods(GstRtsp.RTSPAuthMethod.DIGEST)
        else:
            basic = GstRtspServer.RTSPAuth.make_basic(a.user, a.password)
            auth.add_basic(basic, user)
            auth.set_supported_methods(GstRtsp.RTSPAuthMethod.BASIC)
        server.set_auth(auth)
        role = "user"

    raw = (
        # A moving zone plate: fine detail everywhere, so encoders meet their target
        # bitrate instead of idling on a flat picture.
        f"videotestsrc is-live=true pattern=zone-plate kx2=20 ky2=20 kt=1 ! "
        f"video/x-raw,format=I420,width={w},height={h},framerate={a.fps}/1"
    )
    x264 = (
        f"{raw} ! x264enc tune=zerolatency speed-preset=ultrafast bitrate={a.kbps} "
        f"key-int-max={a.fps * 2} ! video/x-h264,profile=main ! "
        "rtph264pay name=pay0 pt=96 config-interval=-1"
    )
    mounts = server.get_mount_points()
    everyone = [role]
    mounts.add_factory("/live", factory(f"( {x264} )", True, everyone))
    mounts.add_factory(
        "/mjpeg",
        factory(f"( {raw} ! jpegenc quality=85 ! rtpjpegpay name=pay0 pt=26 )", True, everyone),
    )
    if a.h264:
        mounts.add_factory(
            "/h264",
            factory(
                f"( filesrc location={a.h264} ! qtdemux ! h264parse ! "
                "rtph264pay name=pay0 pt=96 )",
                False,
                everyone,
            ),
        )
    if a.h265:
        mounts.add_factory(
            "/h265",
            factory(
                f"( filesrc location={a.h265} ! qtdemux ! h265parse ! "
                "rtph265pay name=pay0 pt=96 )",
                False,
                everyone,
            ),
        )
    if server.attach(None) == 0:
        print(f"cannot listen on 127.0.0.1:{a.port}", file=sys.stderr)
        sys.exit(1)
    loop = GLib.MainLoop()
    for s in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, s, loop.quit)
    print(f"READY {a.port}", flush=True)
    loop.run()


if __name__ == "__main__":
    main()
