/*
 * A field device in C: test-pattern streams from its config, application permission
 * mode (auto_permission 0) granting master by a rule, report data, control data.
 *
 *   field CONFIG SECONDS|- [ALLOWED_PREFIX]
 *
 * A remote whose id starts with ALLOWED_PREFIX (default: any) is made master when it
 * asks; others are left guest. Every control message is answered from inside the
 * callback with a report "ack:<message>"; a report "tick N" goes out every 500 ms. With
 * "audio_play":"outside" in its config, it counts the mixed audio it is given (10 ms
 * frames) and how many of them are not silent. With two or more addresses in
 * "network_bind" it prints each network path's figures once a second.
 * Runs SECONDS (or, with "-", until its standard input is closed), then logs out.
 */
#include <fieldlink.h>

#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct site {
    fl_field *dev;
    const char *allowed;
    unsigned long audio_frames, loud_frames; /* only touched on the event thread */
};

static void fail(const char *what, int rc) {
    char msg[512] = "";
    fl_last_error(msg, sizeof msg);
    fprintf(stderr, "%s failed: %d %s: %s\n", what, rc, fl_error_name(rc), msg);
}

/* Called on the device's event thread; calling back into the API from here is allowed. */
static void on_request(void *ctx, const char *remote_id, int level) {
    struct site *s = ctx;
    int grant = level == 1 && strncmp(remote_id, s->allowed, strlen(s->allowed)) == 0;
    printf("permission_request remote=%s level=%d -> %s\n", remote_id, level,
           grant ? "master" : (level == 0 ? "released" : "guest"));
    int rc = fl_field_set_operation_permission(s->dev, remote_id, grant ? 1 : 0);
    if (rc != FL_OK)
        fail("fl_field_set_operation_permission", rc);
    fflush(stdout);
}

static void on_control(void *ctx, const char *from, const uint8_t *data, size_t len, int qos) {
    struct site *s = ctx;
    printf("control from=%s qos=%d data=%.*s\n", from, qos, (int)len, (const char *)data);
    char ack[720];
    int n = snprintf(ack, sizeof ack, "ack:%.*s", (int)len, (const char *)data);
    int rc = fl_field_send_control_data(s->dev, (const uint8_t *)ack, (size_t)n, 1);
    if (rc != FL_OK)
        fail("fl_field_send_control_data (from the callback)", rc);
    fflush(stdout);
}

static void on_audio(void *ctx, const int16_t *pcm, size_t samples, uint32_t rate, uint16_t channels) {
    struct site *s = ctx;
    (void)rate, (void)channels;
    int peak = 0;
    for (size_t i = 0; i < samples; i++)
        peak = abs(pcm[i]) > peak ? abs(pcm[i]) : peak;
    s->audio_frames++;
    s->loud_frames += peak > 1000;
}

static void on_master(void *ctx, const char *master) {
    (void)ctx;
    printf("master %s\n", master ? master : "(none)");
    fflush(stdout);
}

static void on_session(void *ctx, const char *remote_id, int joined) {
    struct site *s = ctx;
    printf("session remote=%s %s\n", remote_id, joined ? "joined" : "left");
    /* A device cannot be freed from its own callback: refused, nothing freed. */
    int rc = fl_field_free(s->dev);
    printf("free from a callback: %s\n", fl_error_name(rc));
    fflush(stdout);
}

static void on_connection(void *ctx, int state, int code, const char *message) {
    (void)ctx;
    printf("connection state=%d code=%d %s\n", state, code, message ? message : "");
    fflush(stdout);
}

static void on_paths(void *ctx, const fl_path_stats *paths, size_t n) {
    (void)ctx;
    static const char *const states[] = {"up", "recovering", "down"};
    printf("paths n=%zu", n);
    for (size_t i = 0; i < n; i++) {
        const fl_path_stats *p = &paths[i];
        const char *state = p->state >= 0 && p->state <= 2 ? states[p->state] : "?";
        printf(" %u:%s:%s:rtt=%.1f:loss=%.1f:share=%.0f:downs=%u", p->path, p->local, state,
               p->rtt_ms, p->loss_pct, p->share_pct, p->downs);
    }
    printf("\n");
    fflush(stdout);
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s CONFIG SECONDS|- [ALLOWED_PREFIX]\n", argv[0]);
        return 2;
    }
    struct site s = {NULL, argc > 3 ? argv[3] : "", 0, 0};
    int rc = fl_field_create(argv[1], &s.dev);
    if (rc != FL_OK) {
        fail("fl_field_create", rc);
        return 1;
    }
    fl_field_on_permission_request(s.dev, on_request, &s);
    fl_field_on_control_data(s.dev, on_control, &s);
    fl_field_on_master(s.dev, on_master, &s);
    fl_field_on_session(s.dev, on_session, &s);
    fl_field_on_connection(s.dev, on_connection, &s);
    fl_field_on_mixed_audio(s.dev, on_audio, &s);
    fl_field_on_paths(s.dev, on_paths, &s);
    if ((rc = fl_field_start(s.dev)) != FL_OK) {
        fail("fl_field_start", rc);
        fl_field_free(s.dev);
        return 1;
    }
    printf("ready\n");
    fflush(stdout);
    int until_eof = strcmp(argv[2], "-") == 0;
    int ticks = (int)(atof(argv[2]) * 2);
    for (int i = 0; until_eof || i < ticks; i++) {
        if (until_eof) {
            struct pollfd in = {0, POLLIN, 0};
            char buf[256];
            if (poll(&in, 1, 500) > 0 && read(0, buf, sizeof buf) <= 0)
                break;
        } else {
            usleep(500000);
        }
        char tick[32];
        int n = snprintf(tick, sizeof tick, "tick %d", i);
        rc = fl_field_send_control_data(s.dev, (const uint8_t *)tick, (size_t)n, 0);
        /* Nobody in session yet is not an error worth stopping for. */
        if (rc != FL_OK && i == 0)
            fail("fl_field_send_control_data", rc);
    }
    rc = fl_field_free(s.dev);
    /* The event thread has ended: the counts are final. */
    printf("audio frames=%lu loud=%lu\n", s.audio_frames, s.loud_frames);
    printf("done %d\n", rc);
    return rc == FL_OK ? 0 : 1;
}
