/*
 * sdbus-attach: what pluto (or any C IKE daemon) does to get an XFRM
 * interface from xfrmid with sd-bus: call org.xfrmid1.Manager.Attach and put
 * the returned if_id (XFRMA_IF_ID) and output mark/mask (XFRMA_SET_MARK,
 * XFRMA_SET_MARK_MASK) on its SAs and policies.
 *
 * Build: gcc -o sdbus-attach sdbus-attach.c $(pkg-config --cflags --libs libsystemd)
 * Run:   sdbus-attach [--address BUS] [--detach] NAME OWNER
 *        (default: the system bus; prints "if_id=N mark=0x.. mask=0x.. path=/org/..")
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-bus.h>

static int usage(const char *prog)
{
	fprintf(stderr, "usage: %s [--address BUS] [--detach] NAME OWNER\n", prog);
	return 2;
}

static int open_bus(const char *address, sd_bus **bus)
{
	if (address == NULL)
		return sd_bus_open_system(bus);
	int r = sd_bus_new(bus);
	if (r < 0)
		return r;
	r = sd_bus_set_address(*bus, address);
	if (r >= 0)
		r = sd_bus_set_bus_client(*bus, 1);
	if (r >= 0)
		r = sd_bus_start(*bus);
	return r;
}

int main(int argc, char **argv)
{
	const char *address = NULL;
	int detach = 0, i = 1;

	for (; i < argc && strncmp(argv[i], "--", 2) == 0; i++) {
		if (strcmp(argv[i], "--address") == 0 && i + 1 < argc)
			address = argv[++i];
		else if (strcmp(argv[i], "--detach") == 0)
			detach = 1;
		else
			return usage(argv[0]);
	}
	if (argc - i != 2)
		return usage(argv[0]);
	const char *name = argv[i], *owner = argv[i + 1];

	sd_bus *bus = NULL;
	sd_bus_error error = SD_BUS_ERROR_NULL;
	sd_bus_message *reply = NULL;
	int r = open_bus(address, &bus);
	if (r < 0) {
		fprintf(stderr, "cannot connect to the bus: %s\n", strerror(-r));
		return 1;
	}

	if (detach) {
		int deleted = 0;
		/* a{sv} options: none ("a{sv}" with 0 entries) */
		r = sd_bus_call_method(bus, "org.xfrmid1", "/org/xfrmid1", "org.xfrmid1.Manager", "Detach",
				       &error, &reply, "ssa{sv}", name, owner, 0);
		if (r >= 0)
			r = sd_bus_message_read(reply, "b", &deleted);
		if (r >= 0)
			printf("detached deleted=%s\n", deleted ? "yes" : "no");
	} else {
		const char *path = NULL;
		uint32_t if_id = 0, mark = 0, mask = 0;
		/* bind_to_caller=false: the reference outlives this process, as pluto's
		 * connection outlives any one D-Bus connection */
		r = sd_bus_call_method(bus, "org.xfrmid1", "/org/xfrmid1", "org.xfrmid1.Manager", "Attach",
				       &error, &reply, "ssa{sv}", name, owner, 1, "bind_to_caller", "b", 0);
		if (r >= 0)
			r = sd_bus_message_read(reply, "ouuu", &path, &if_id, &mark, &mask);
		if (r >= 0)
			printf("if_id=%u mark=0x%x mask=0x%x path=%s\n", if_id, mark, mask, path);
	}

	if (r < 0) {
		/* the error name says what kind of failure; the message names the value */
		fprintf(stderr, "%s: %s\n", error.name ? error.name : "error",
			error.message ? error.message : strerror(-r));
	}
	sd_bus_error_free(&error);
	sd_bus_message_unref(reply);
	sd_bus_flush_close_unref(bus);
	return r < 0 ? 1 : 0;
}
