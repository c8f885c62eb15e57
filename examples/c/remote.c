/*
 * A remote device (operator console) in C: log in, list the field devices, connect two
 * streams, count frames, ask for master, send control data, print report data,
 * disconnect.
 *
 *   remote CONFIG GWID [SECONDS [audio,diag]]
 *
 * CONFIG is the remote's config.json (or the JSON itself); GWID the field device
 * (project/device). While watching SECONDS (default 3), with "audio" it talks: a 440 Hz
 * tone pushed as external PCM (config "audio_enable":1, "audio_external":1); with "diag"
 * it asks for a diagnosis and prints the report. Exits 0 when both streams played,
 * master was granted, a report came back after the control data (and the diagnosis
 * succeeded, if asked); 1 otherwise (what is missing is printed).
 */
#include <fieldlink.h>

#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

struct console {
    atomic_int playing[2];
    atomic_ulong frames[2];
    atomic_int master;
    atomic_int reports_after_send;
    atomic_int sent;
    atomic_int diag;
};

static void fail(const char *what, int rc) {
    char msg[512] = "";
    fl_last_error(msg, sizeof msg);
    fprintf(stderr, "%s failed: %d %s: %s\n", what, rc, fl_error_name(rc), msg);
}

static const char *state_name(int s) {
    switch (s) {
    case FL_STREAM_CONNECTING: return "connecting";
    case FL_STREAM_PLAYING: return "playing";
    case FL_STREAM_FAILED: return "failed";
    default: return "disconnected";
    }
}

static void on_state(void *ctx, uint32_t conn_fd, const char *gwid, uint32_t stream_id,
                     int state, const char *reason) {
    struct console *c = ctx;
    printf("state conn_fd=%u gwid=%s stream=%u state=%s%s%s\n", conn_fd, gwid, stream_id,
           state_name(state), reason ? " reason=" : "", reason ? reason : "");
    if (conn_fd < 2)
        atomic_store(&c->playing[conn_fd], state == FL_STREAM_PLAYING);
}

static void on_frame(void *ctx, const fl_video_frame *f) {
    struct console *c = ctx;
    if (f->conn_fd < 2)
        atomic_fetch_add(&c->frames[f->conn_fd], 1);
}

static void on_permission(void *ctx, const char *gwid, int self, const char *master) {
    struct console *c = ctx;
    printf("permission gwid=%s self=%d master=%s\n", gwid, self, master ? master : "(none)");
    atomic_store(&c->master, self == 1);
}

static void on_report(void *ctx, const char *from, const uint8_t *data, size_t len, int qos) {
    struct console *c = ctx;
    printf("report from=%s qos=%d data=%.*s\n", from, qos, (int)len, (const char *)data);
    if (atomic_load(&c->sent) && len >= 4 && memcmp(data, "ack:", 4) == 0)
        atomic_fetch_add(&c->reports_after_send, 1);
}

static void on_diag(void *ctx, const char *gwid, int type, const char *json) {
    struct console *c = ctx;
    printf("diag gwid=%s type=%d json=%s\n", gwid, type, json);
    atomic_store(&c->diag, type == 1 ? 1 : -1);
}

static void on_connection(void *ctx, int state, int code, const char *message) {
    (void)ctx;
    printf("connection state=%d code=%d %s\n", state, code, message ? message : "");
}

/* Waits up to `secs` for *flag (or both flags of an array of two) to be set. */
static int wait_for(atomic_int *flag, int n, double secs) {
    for (int i = 0; i < (int)(secs * 50); i++) {
        int all = 1;
        for (int k = 0; k < n; k++)
            all &= atomic_load(&flag[k]) != 0;
        if (all)
            return 1;
        usleep(20000);
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s CONFIG GWID [SECONDS]\n", argv[0]);
        return 2;
    }
    const char *gwid = argv[2];
    double secs = argc > 3 ? atof(argv[3]) : 3.0;
    const char *extras = argc > 4 ? argv[4] : "";
    int talk = strstr(extras, "audio") != NULL, diag = strstr(extras, "diag") != NULL;
    struct console c;
    memset(&c, 0, sizeof c);

    fl_remote *r = NULL;
    int rc = fl_remote_create(argv[1], &r);
    if (rc != FL_OK) {
        fail("fl_remote_create", rc);
        return 1;
    }
    fl_remote_on_stream_state(r, on_state, &c);
    fl_remote_on_video_frame(r, on_frame, &c);
    fl_remote_on_permission_state(r, on_permission, &c);
    fl_remote_on_report_data(r, on_report, &c);
    fl_remote_on_connection(r, on_connection, &c);
    fl_remote_on_diag_report(r, on_diag, &c);
    if ((rc = fl_remote_start(r)) != FL_OK) {
        fail("fl_remote_start", rc);
        fl_remote_free(r);
        return 1;
    }

    printf("audio devices capture=%d playback=%d\n", fl_audio_device_count(FL_AUDIO_CAPTURE),
           fl_audio_device_count(FL_AUDIO_PLAYBACK));
    /* A code the server cannot have issued: refused with its reason. */
    rc = fl_remote_set_session_permission_token(r, gwid, "bogus_29433600");
    printf("session code refused: %s\n", rc == FL_OK ? "no" : fl_error_name(rc));

    char list[4096];
    rc = fl_remote_list_fields(r, list, sizeof list);
    if (rc > 0)
        printf("fields %s\n", list);
    else
        fail("fl_remote_list_fields", rc);

    uint32_t streams[2] = {0, 1}, fds[2] = {0, 1};
    if ((rc = fl_remote_connect(r, gwid, 2, streams, fds, NULL)) != FL_OK)
        fail("fl_remote_connect", rc);
    int played = wait_for(c.playing, 2, 15);
    if (diag && (rc = fl_remote_diag_request(r, gwid)) != FL_OK)
        fail("fl_remote_diag_request", rc);
    /* Watch (and talk) for `secs`: one 10 ms frame of 48 kHz mono a step. */
    int16_t pcm[480];
    for (long step = 0; step < (long)(secs * 100); step++) {
        if (talk) {
            for (int i = 0; i < 480; i++)
                pcm[i] = (int16_t)(8000 * sin(2 * M_PI * 440 * (step * 480 + i) / 48000.0));
            if ((rc = fl_remote_push_audio(r, pcm, 480, 48000, 1)) != FL_OK && step == 0)
                fail("fl_remote_push_audio", rc);
        }
        usleep(10000);
    }
    int diagnosed = !diag || wait_for(&c.diag, 1, 20);
    printf("frames conn_fd=0 %lu conn_fd=1 %lu\n", atomic_load(&c.frames[0]),
           atomic_load(&c.frames[1]));

    if ((rc = fl_remote_request_permission(r, gwid, 1)) != FL_OK)
        fail("fl_remote_request_permission", rc);
    int master = wait_for(&c.master, 1, 10);

    const char hello[] = "hello from C";
    atomic_store(&c.sent, 1);
    if ((rc = fl_remote_send_control_data(r, gwid, (const uint8_t *)hello, strlen(hello), 1)) != FL_OK)
        fail("fl_remote_send_control_data", rc);
    int reported = wait_for(&c.reports_after_send, 1, 10);

    if ((rc = fl_remote_disconnect(r, 1, fds)) != FL_OK)
        fail("fl_remote_disconnect", rc);
    if ((rc = fl_remote_disconnect_all(r)) != FL_OK)
        fail("fl_remote_disconnect_all", rc);
    fl_remote_free(r);

    diagnosed = diagnosed && (!diag || c.diag == 1);
    int ok = played && master && reported && diagnosed && c.frames[0] > 0 && c.frames[1] > 0;
    printf("result played=%d master=%d report=%d diag=%d ok=%d\n", played, master, reported,
           diagnosed, ok);
    return ok ? 0 : 1;
}
