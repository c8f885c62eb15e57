/*
 * Internal rendering into a C program's own X11 windows (Xlib): two windows, two
 * streams drawn by libfieldlink, swapped with fl_remote_set_windows, each window read
 * back (XGetImage) to check that the right stream is in it. The test pattern tints each
 * stream: stream 0 reddish, stream 1 bluish.
 *
 *   windows CONFIG GWID [SHOT_DIR]
 *
 * With SHOT_DIR, each window is also saved there as a PPM after each step. Exits 0 when
 * both windows showed the right stream before and after the swap and the swap caused no
 * reconnection; 1 otherwise.
 */
#include <fieldlink.h>

#include <X11/Xlib.h>
#include <X11/Xutil.h>

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define W 320
#define H 180

struct view {
    atomic_int playing[2];
    atomic_int state_changes;
    atomic_ulong drawn[2]; /* frames that arrived while bound to a window, per conn_fd */
};

static void fail(const char *what, int rc) {
    char msg[512] = "";
    fl_last_error(msg, sizeof msg);
    fprintf(stderr, "%s failed: %d %s: %s\n", what, rc, fl_error_name(rc), msg);
}

static void on_state(void *ctx, uint32_t conn_fd, const char *gwid, uint32_t stream_id,
                     int state, const char *reason) {
    struct view *v = ctx;
    (void)reason;
    printf("state conn_fd=%u gwid=%s stream=%u state=%d\n", conn_fd, gwid, stream_id, state);
    fflush(stdout);
    atomic_fetch_add(&v->state_changes, 1);
    if (conn_fd < 2)
        atomic_store(&v->playing[conn_fd], state == FL_STREAM_PLAYING);
}

static void on_frame(void *ctx, const fl_video_frame *f) {
    struct view *v = ctx;
    if (f->conn_fd < 2 && f->window != 0 && f->y != NULL)
        atomic_fetch_add(&v->drawn[f->conn_fd], 1);
}

/* Which stream a window shows: 0 (red above blue), 1 (blue above red), -1 (neither,
 * e.g. still black). Averages the window's lower half (the text is at the top left). */
static int stream_in(Display *d, Window w, const char *shot) {
    XImage *img = XGetImage(d, w, 0, 0, W, H, AllPlanes, ZPixmap);
    if (!img)
        return -1;
    unsigned long r = 0, g = 0, b = 0, n = 0;
    for (int y = H / 2; y < H; y++)
        for (int x = 0; x < W; x++) {
            unsigned long p = XGetPixel(img, x, y);
            r += (p >> 16) & 0xff;
            g += (p >> 8) & 0xff;
            b += p & 0xff;
            n++;
        }
    if (shot) {
        FILE *f = fopen(shot, "wb");
        if (f) {
            fprintf(f, "P6\n%d %d\n255\n", W, H);
            for (int y = 0; y < H; y++)
                for (int x = 0; x < W; x++) {
                    unsigned long p = XGetPixel(img, x, y);
                    unsigned char rgb[3] = {(p >> 16) & 0xff, (p >> 8) & 0xff, p & 0xff};
                    fwrite(rgb, 1, 3, f);
                }
            fclose(f);
        }
    }
    XDestroyImage(img);
    r /= n, g /= n, b /= n;
    printf("window %#lx mean rgb %lu %lu %lu\n", w, r, g, b);
    if (r > b + 30)
        return 0;
    if (b > r + 30)
        return 1;
    return -1;
}

static Window make_window(Display *d, int x) {
    int s = DefaultScreen(d);
    Window w = XCreateSimpleWindow(d, RootWindow(d, s), x, 0, W, H, 0, BlackPixel(d, s),
                                   BlackPixel(d, s));
    XMapWindow(d, w);
    return w;
}

static int check(Display *d, Window a, Window b, int want_a, const char *dir, const char *step) {
    char pa[512], pb[512];
    snprintf(pa, sizeof pa, "%s/%s-a.ppm", dir ? dir : ".", step);
    snprintf(pb, sizeof pb, "%s/%s-b.ppm", dir ? dir : ".", step);
    int sa = stream_in(d, a, dir ? pa : NULL), sb = stream_in(d, b, dir ? pb : NULL);
    printf("%s: window A shows stream %d, window B shows stream %d\n", step, sa, sb);
    fflush(stdout);
    return sa == want_a && sb == 1 - want_a;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s CONFIG GWID [SHOT_DIR]\n", argv[0]);
        return 2;
    }
    const char *dir = argc > 3 ? argv[3] : NULL;
    Display *d = XOpenDisplay(NULL);
    if (!d) {
        fprintf(stderr, "cannot open the X display (DISPLAY=%s)\n", getenv("DISPLAY"));
        return 1;
    }
    Window a = make_window(d, 0), b = make_window(d, W + 10);
    XSync(d, False);

    struct view v;
    memset(&v, 0, sizeof v);
    fl_remote *r = NULL;
    int rc = fl_remote_create(argv[1], &r);
    if (rc != FL_OK) {
        fail("fl_remote_create", rc);
        return 1;
    }
    fl_remote_on_stream_state(r, on_state, &v);
    fl_remote_on_video_frame(r, on_frame, &v);
    if ((rc = fl_remote_start(r)) != FL_OK) {
        fail("fl_remote_start", rc);
        fl_remote_free(r);
        return 1;
    }
    uint32_t streams[2] = {0, 1}, fds[2] = {0, 1};
    uint64_t ab[2] = {a, b}, ba[2] = {b, a};
    if ((rc = fl_remote_set_windows(r, 2, fds, ab)) != FL_OK)
        fail("fl_remote_set_windows", rc);
    if ((rc = fl_remote_connect(r, argv[2], 2, streams, fds, NULL)) != FL_OK)
        fail("fl_remote_connect", rc);
    for (int i = 0; i < 750 && !(v.playing[0] && v.playing[1]); i++)
        usleep(20000);
    usleep(1500000);
    int before = check(d, a, b, 0, dir, "before");

    int changes = atomic_load(&v.state_changes);
    unsigned long drawn0 = atomic_load(&v.drawn[0]);
    if ((rc = fl_remote_set_windows(r, 2, fds, ba)) != FL_OK)
        fail("fl_remote_set_windows (swap)", rc);
    usleep(1000000);
    int after = check(d, a, b, 1, dir, "after");
    int no_reconnect = atomic_load(&v.state_changes) == changes;
    unsigned long drawn_since = atomic_load(&v.drawn[0]) - drawn0;

    fl_remote_free(r);
    XDestroyWindow(d, a);
    XDestroyWindow(d, b);
    XCloseDisplay(d);
    int ok = before && after && no_reconnect && drawn_since > 0;
    printf("result before=%d after=%d no_reconnect=%d frames_after_swap=%lu ok=%d\n", before,
           after, no_reconnect, drawn_since, ok);
    return ok ? 0 : 1;
}
