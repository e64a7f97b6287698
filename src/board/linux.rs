//! The real Sense HAT on a Linux I2C bus (`/dev/i2c-1` on every Raspberry Pi with a 40-pin
//! header), through `linux-embedded-hal`, which selects each address with the plain `I2C_SLAVE`
//! ioctl: when a kernel driver owns an address the kernel answers EBUSY, and this module turns
//! that into an error naming the driver and the fix. Nothing here ever force-binds an address:
//! a sensor whose address a kernel driver owns is read through that driver's IIO sysfs files
//! instead ([`super::iio`]), or, when it offers none, is an error that says how to free it.

use std::io;
use std::path::Path;

use linux_embedded_hal::{Delay, I2CError, I2cdev};

use super::iio::IioSensor;
use super::{BusErrorHint, Handle, SenseHat, Sensor, SensorError};

/// Where the kernel lists I2C clients and their drivers.
const I2C_DEVICES: &str = "/sys/bus/i2c/devices";

const ENABLE_I2C: &str = "enable I2C with `sudo raspi-config nonint do_i2c 0` and reboot (by hand: dtparam=i2c_arm=on in config.txt and i2c-dev in /etc/modules)";
const JOIN_GROUP: &str = "add the user to the i2c group (`sudo usermod -aG i2c $USER`, then log in again); the systemd unit does this with SupplementaryGroups=i2c";
const STUCK: &str = "the bus timed out or failed mid-transfer: if this goes on, power the Pi off and reseat the Sense HAT";

/// The bus number of `/dev/i2c-N`, for sysfs paths.
fn bus_number(path: &str) -> Option<u32> {
    path.strip_prefix("/dev/i2c-")?.parse().ok()
}

/// The kernel driver bound to an address of the bus, if any (`/sys/bus/i2c/devices/N-00XX/driver`).
pub fn kernel_driver(bus: u32, address: u8) -> Option<String> {
    kernel_driver_in(Path::new(I2C_DEVICES), bus, address)
}

/// The kernel driver bound to `address` on the bus `/dev/i2c-N` at `path`, if any.
pub fn owner(path: &str, address: u8) -> Option<String> {
    bus_number(path).and_then(|n| kernel_driver(n, address))
}

fn kernel_driver_in(devices: &Path, bus: u32, address: u8) -> Option<String> {
    let link = client_dir(devices, bus, address).join("driver");
    let target = std::fs::read_link(link).ok()?;
    Some(target.file_name()?.to_string_lossy().into_owned())
}

fn client_dir(devices: &Path, bus: u32, address: u8) -> std::path::PathBuf {
    devices.join(format!("{bus}-{address:04x}"))
}

/// Refused by the service's device policy: its `DeviceAllow=` does not list `path`, whatever
/// groups the user is in (the kernel's cgroup check answers EPERM, where a file mode
/// answers EACCES).
fn device_allow_hint(path: &str) -> String {
    format!(
        "; the service's DeviceAllow= does not list {path}: `sudo systemctl edit sensehat-monitor`, add `[Service]` and `DeviceAllow={path} rw`, then restart it"
    )
}

/// EBUSY where the driver holding the address could not be named (it let go meanwhile, or
/// the bus is not a `/dev/i2c-N`): how to find it, without a command that names a guess.
fn unknown_owner_hint(sensor: Sensor, bus: u32) -> String {
    format!(
        "; a kernel driver owns this address: `ls -l /sys/bus/i2c/devices/{bus}-{:04x}/driver` names it; unbind it or blacklist its module, as docs/operating.md says",
        sensor.address()
    )
}

/// The module that holds the driver bound to `address`, if it is a module
/// (`.../N-00XX/driver/module`, a link to `/sys/module/NAME`): `None` for a driver built into
/// the kernel, which no blacklist can keep off. A driver's name is not always its module's
/// (`st-press-i2c` is in `st_pressure_i2c`), and `blacklist` takes the module's.
fn driver_module_in(devices: &Path, bus: u32, address: u8) -> Option<String> {
    let link = client_dir(devices, bus, address).join("driver/module");
    let target = std::fs::read_link(link).ok()?;
    Some(target.file_name()?.to_string_lossy().into_owned())
}

fn owned_hint(sensor: Sensor, bus: u32, driver: &str, module: Option<&str>) -> String {
    let unbind = format!(
        "`echo {bus}-{:04x} | sudo tee /sys/bus/i2c/drivers/{driver}/unbind`",
        sensor.address()
    );
    let keep_off = match module {
        Some(m) => format!(
            " or keep its module off at boot (`echo \"blacklist {m}\" | sudo tee -a /etc/modprobe.d/sensehat-monitor.conf`, then reboot)"
        ),
        None => format!(
            "; /sys/bus/i2c/drivers/{driver}/module names no module, so the driver is likely built into the kernel and no blacklist keeps it off: unbind it at each boot, before the agent starts"
        ),
    };
    format!(
        "; the kernel driver `{driver}` owns this address. Unbind it ({unbind}){keep_off}; sensehat-monitor never force-binds a driver's address"
    )
}

fn errno(e: &I2CError) -> Option<i32> {
    match e.inner() {
        linux_embedded_hal::i2cdev::linux::LinuxI2CError::Errno(n) => Some(*n),
        linux_embedded_hal::i2cdev::linux::LinuxI2CError::Io(io) => io.raw_os_error(),
    }
}

const EBUSY: i32 = 16;
const EPERM: i32 = 1;
const EIO: i32 = 5;
const ETIMEDOUT: i32 = 110;
const EACCES: i32 = 13;
const ENOENT: i32 = 2;
const ENXIO: i32 = 6;
const EREMOTEIO: i32 = 121;
const ENOTTY: i32 = 25;

impl BusErrorHint for I2CError {
    fn hint(&self, sensor: Sensor, bus: &str) -> String {
        match errno(self) {
            Some(EBUSY) => {
                let n = bus_number(bus).unwrap_or(1);
                match kernel_driver(n, sensor.address()) {
                    Some(driver) => {
                        let devices = Path::new(I2C_DEVICES);
                        let module = driver_module_in(devices, n, sensor.address());
                        owned_hint(sensor, n, &driver, module.as_deref())
                    }
                    None => unknown_owner_hint(sensor, n),
                }
            }
            Some(EACCES) => format!("; {JOIN_GROUP}"),
            Some(EPERM) => device_allow_hint(bus),
            Some(ETIMEDOUT) | Some(EIO) => format!("; {STUCK}"),
            Some(ENOENT) => format!("; {ENABLE_I2C}"),
            Some(ENXIO) | Some(EREMOTEIO) => format!(
                "; nothing answered: is the Sense HAT seated on the 40-pin header? (`i2cdetect -y {}` lists what answers)",
                bus_number(bus).unwrap_or(1)
            ),
            _ => String::new(),
        }
    }
}

/// Why the bus at `path` could not be opened, and what to do; `buses` says whether the machine
/// has any I2C bus device (then I2C is on, and the path is what is wrong).
fn open_error(path: &str, sensor: Sensor, e: &io::Error, buses: bool) -> SensorError {
    let hint = match e.kind() {
        // A bare number is not a path; an I2C bus named after another is not I2C disabled.
        io::ErrorKind::NotFound if !path.starts_with('/') => format!(
            "; --i2c-bus takes a device path, such as /dev/i2c-{}",
            path.parse::<u32>().unwrap_or(1)
        ),
        io::ErrorKind::NotFound if buses => format!(
            "; {path} does not exist: check --i2c-bus (`ls /dev/i2c-*` lists the buses this Pi has)"
        ),
        io::ErrorKind::NotFound => format!("; {path} does not exist: {ENABLE_I2C}"),
        _ if e.raw_os_error() == Some(EPERM) => device_allow_hint(path),
        io::ErrorKind::PermissionDenied => format!("; {JOIN_GROUP}"),
        _ if e.raw_os_error() == Some(ENOTTY) => {
            format!("; {path} is not an I2C bus: check --i2c-bus")
        }
        _ => String::new(),
    };
    SensorError {
        sensor,
        bus: path.to_owned(),
        detail: format!("cannot open the bus: {e}"),
        hint,
    }
}

/// Whether `dev` (`/dev`) holds any I2C bus device (`i2c-*`): if so, I2C is enabled.
fn any_i2c_bus_in(dev: &Path) -> bool {
    std::fs::read_dir(dev).is_ok_and(|d| {
        d.flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("i2c-"))
    })
}

fn open_handle(path: &str, devices: &Path, sensor: Sensor) -> Result<Handle<I2cdev>, SensorError> {
    if let Some(bus) = bus_number(path) {
        if let Some(driver) = kernel_driver_in(devices, bus, sensor.address()) {
            let client = client_dir(devices, bus, sensor.address());
            return match IioSensor::find(sensor, &client, &driver) {
                Some(iio) => {
                    tracing::info!(
                        sensor = sensor.name(),
                        driver,
                        device = %iio.dir().display(),
                        "a kernel driver owns this sensor's address: reading it through the driver's IIO files, which can take seconds a sample (see docs/operating.md, Troubleshooting)"
                    );
                    Ok(Handle::Iio(iio))
                }
                None => Err(SensorError {
                    sensor,
                    bus: path.to_owned(),
                    detail: "address in use by a kernel driver (EBUSY), which offers no IIO channel to read instead".into(),
                    hint: owned_hint(
                        sensor,
                        bus,
                        &driver,
                        driver_module_in(devices, bus, sensor.address()).as_deref(),
                    ),
                }),
            };
        }
    }
    I2cdev::new(path).map(Handle::I2c).map_err(|e| {
        let io = match e {
            linux_embedded_hal::i2cdev::linux::LinuxI2CError::Io(io) => io,
            linux_embedded_hal::i2cdev::linux::LinuxI2CError::Errno(n) => {
                io::Error::from_raw_os_error(n)
            }
        };
        open_error(path, sensor, &io, any_i2c_bus_in(Path::new("/dev")))
    })
}

/// Open and initialise the Sense HAT on `path`.
pub fn open(path: &str) -> Result<SenseHat<I2cdev, Delay>, SensorError> {
    open_in(path, Path::new(I2C_DEVICES))
}

/// [`open`], with the kernel's list of I2C clients at `devices`.
fn open_in(path: &str, devices: &Path) -> Result<SenseHat<I2cdev, Delay>, SensorError> {
    let hts = open_handle(path, devices, Sensor::Hts221)?;
    let lps = open_handle(path, devices, Sensor::Lps25h)?;
    let acc = open_handle(path, devices, Sensor::Lsm9ds1)?;
    SenseHat::init_handles(path, hts, lps, acc, Delay)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::board::HealthEvent;

    // A missing bus device is an error naming the bus and the sensor's address.
    #[test]
    fn missing_bus_names_the_bus() {
        let e = match open("/dev/i2c-does-not-exist") {
            Err(e) => e,
            Ok(_) => panic!("opened a bus that does not exist"),
        };
        let msg = e.to_string();
        assert!(msg.contains("/dev/i2c-does-not-exist"), "{msg}");
        assert!(msg.contains("0x5f"), "{msg}");
    }

    // A missing bus device says how to enable I2C on a machine with no I2C bus at all, and to
    // check --i2c-bus on one with some; a bare number is shown as the path it means.
    #[test]
    fn a_missing_bus_hint_follows_the_machine_s_buses() {
        let dev = tempfile::tempdir().unwrap();
        assert!(!any_i2c_bus_in(dev.path()));
        std::fs::write(dev.path().join("i2c-20"), "").unwrap();
        assert!(any_i2c_bus_in(dev.path()));
        let gone = io::Error::from(io::ErrorKind::NotFound);
        let hint = |path: &str, buses: bool| open_error(path, Sensor::Hts221, &gone, buses).hint;
        assert!(hint("/dev/i2c-3", false).contains("raspi-config"));
        assert!(hint("/dev/i2c-3", true).contains("check --i2c-bus"));
        assert!(hint("3", true).contains("such as /dev/i2c-3"));
    }

    /// A fake `/sys/bus/i2c/devices` entry: the client of `address` on bus 1, bound to
    /// `driver`, with an IIO device holding `files` (none when empty).
    fn client(devices: &Path, address: u8, driver: &str, files: &[(&str, &str)]) {
        let dir = client_dir(devices, 1, address);
        std::fs::create_dir_all(&dir).unwrap();
        let target = devices.join("../drivers").join(driver);
        std::fs::create_dir_all(&target).unwrap();
        std::os::unix::fs::symlink(&target, dir.join("driver")).unwrap();
        if !files.is_empty() {
            let iio = dir.join("iio:device0");
            std::fs::create_dir_all(&iio).unwrap();
            for (f, v) in files {
                std::fs::write(iio.join(f), v).unwrap();
            }
        }
    }

    // With every sensor owned by a kernel driver, the board is read through IIO alone: no
    // I2C device is opened (the bus path does not even exist), and a sample has the values
    // the files give.
    #[test]
    fn owned_sensors_are_read_through_iio() {
        let t = tempfile::tempdir().unwrap();
        let devices = t.path().join("devices");
        client(
            &devices,
            0x5f,
            "hts221",
            &[
                ("in_humidityrelative_raw", "100"),
                ("in_humidityrelative_offset", "300"),
                ("in_humidityrelative_scale", "0.1"),
                ("in_temp_raw", "-20"),
                ("in_temp_scale", "0.25"),
            ],
        );
        client(
            &devices,
            0x5c,
            "st-press-i2c",
            &[
                ("in_pressure_raw", "4096000"),
                ("in_pressure_scale", "0.000024414"),
            ],
        );
        client(
            &devices,
            0x6a,
            "st_lsm6dsx_i2c",
            &[
                ("in_accel_x_raw", "0"),
                ("in_accel_y_raw", "0"),
                ("in_accel_z_raw", "16393"),
                ("in_accel_scale", "0.000598206"),
            ],
        );
        let mut hat = match open_in("/dev/i2c-1", &devices) {
            Ok(h) => h,
            Err(e) => panic!("{e}"),
        };
        // IIO reads wait for a conversion: the agent samples such a board off its runtime.
        assert!(hat.reads_iio());
        let (reading, events) = hat.sample(std::time::Instant::now());
        assert!(events.is_empty(), "{events:?}");
        let r = reading.unwrap();
        assert!((r.humidity_rh - 40.0).abs() < 1e-9, "{r:?}");
        assert!((r.temperature_celsius + 5.0).abs() < 1e-9, "{r:?}");
        assert!((r.pressure_hpa - 999.997_44).abs() < 1e-6, "{r:?}");
        assert!((r.acceleration.z_g - 1.0).abs() < 1e-3, "{r:?}");
        assert!(!crate::report::MovingRule::Axis.is_moving(&r.acceleration));

        // A file that disappears (driver unbound) fails the sensor like a bus error: the
        // sample is skipped with the reason, and the sensor recovers when it is back.
        let raw = devices.join("1-005c/iio:device0/in_pressure_raw");
        std::fs::remove_file(&raw).unwrap();
        let (reading, events) = hat.sample(std::time::Instant::now());
        let e = reading.unwrap_err().to_string();
        assert!(
            e.contains("in_pressure_raw") && e.contains("st-press-i2c"),
            "{e}"
        );
        assert_eq!(
            events,
            vec![(
                Sensor::Lps25h,
                HealthEvent::StartedFailing { unsaid_runs: 0 }
            )]
        );
        std::fs::write(&raw, "4096000").unwrap();
        let (reading, events) = hat.sample(std::time::Instant::now());
        assert!(reading.is_ok());
        assert_eq!(
            events,
            vec![(Sensor::Lps25h, HealthEvent::Recovered { failures: 1 })]
        );

        // A pressure no working LPS25H gives is refused, not stored.
        std::fs::write(&raw, "-1").unwrap();
        let e = hat
            .sample(std::time::Instant::now())
            .0
            .unwrap_err()
            .to_string();
        assert!(e.contains("which no working LPS25H gives"), "{e}");
        std::fs::write(&raw, "4096000").unwrap();
        assert!(hat.sample(std::time::Instant::now()).0.is_ok());

        // The driver unbound since the start (its IIO device gone): the hint says to restart
        // the agent, which then reads the chip over I2C, not that the driver owns it.
        std::fs::remove_dir_all(devices.join("1-005c/iio:device0")).unwrap();
        let e = hat
            .sample(std::time::Instant::now())
            .0
            .unwrap_err()
            .to_string();
        assert!(e.contains("restart the agent to read it over I2C"), "{e}");
    }

    // An owned address without an IIO channel is an error naming the driver and how to free it:
    // the blacklist line names the driver's module, which sysfs links, not the driver.
    #[test]
    fn owned_sensor_without_iio_says_how_to_free_it() {
        let t = tempfile::tempdir().unwrap();
        let devices = t.path().join("devices");
        client(&devices, 0x5c, "st-press-i2c", &[]);
        let module = t.path().join("module/st_pressure_i2c");
        std::fs::create_dir_all(&module).unwrap();
        let driver = devices.join("../drivers/st-press-i2c");
        std::os::unix::fs::symlink(&module, driver.join("module")).unwrap();
        let open = || match open_handle("/dev/i2c-1", &devices, Sensor::Lps25h) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("opened a sensor owned by a driver without IIO"),
        };
        let e = open();
        assert!(e.contains("EBUSY") && e.contains("`st-press-i2c`"), "{e}");
        assert!(
            e.contains("echo 1-005c | sudo tee /sys/bus/i2c/drivers/st-press-i2c/unbind"),
            "{e}"
        );
        assert!(e.contains("\"blacklist st_pressure_i2c\""), "{e}");
        assert!(e.contains("never force-binds"), "{e}");
        // A driver no module holds is built in: no blacklist line to follow in vain.
        std::fs::remove_file(driver.join("module")).unwrap();
        let e = open();
        assert!(!e.contains("blacklist st"), "{e}");
        assert!(e.contains("built into the kernel"), "{e}");
    }

    // The unbind command names the bus the agent was pointed at.
    #[test]
    fn unbind_hint_names_the_bus() {
        let h = owned_hint(Sensor::Lps25h, 3, "st_pressure", Some("st_pressure_i2c"));
        assert!(
            h.contains("echo 3-005c | sudo tee /sys/bus/i2c/drivers/st_pressure/unbind"),
            "{h}"
        );
    }

    // A bus error reads as the system's words for it, not Rust's debug form, with what to do.
    #[test]
    fn bus_errors_say_what_the_kernel_said_and_what_to_do() {
        use linux_embedded_hal::i2cdev::linux::LinuxI2CError;
        let bus_error = |errno| I2CError::from(LinuxI2CError::Errno(errno));
        let said = crate::drivers::Error::Bus {
            address: 0x5c,
            source: bus_error(EREMOTEIO),
        }
        .to_string();
        assert!(said.contains("Remote I/O error"), "{said}");
        assert!(!said.contains("Errno"), "{said}");
        let hint = |errno| bus_error(errno).hint(Sensor::Lps25h, "/dev/i2c-1");
        assert!(hint(EREMOTEIO).contains("i2cdetect -y 1"));
        assert!(hint(ETIMEDOUT).contains("reseat"));
        assert!(hint(EIO).contains("reseat"));
        assert!(hint(EPERM).contains("DeviceAllow=/dev/i2c-1 rw"));
        assert!(hint(EACCES).contains("i2c group"));
        // Opening: EPERM is the service's device policy, EACCES the file's mode.
        let open_hint = |errno| {
            open_error(
                "/dev/i2c-1",
                Sensor::Hts221,
                &io::Error::from_raw_os_error(errno),
                true,
            )
            .hint
        };
        assert!(open_hint(EPERM).contains("DeviceAllow=/dev/i2c-1 rw"));
        assert!(open_hint(EACCES).contains("i2c group"));
        // EBUSY from a driver that cannot be named gives no command with a guessed name.
        let unknown = unknown_owner_hint(Sensor::Hts221, 1);
        assert!(
            unknown.contains("/sys/bus/i2c/devices/1-005f/driver"),
            "{unknown}"
        );
        assert!(!unknown.contains("unbind`"), "{unknown}");
    }

    #[test]
    fn parses_bus_numbers() {
        assert_eq!(bus_number("/dev/i2c-1"), Some(1));
        assert_eq!(bus_number("/dev/i2c-x"), None);
    }
}
