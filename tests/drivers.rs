//! The drivers against the simulated register map: raw register contents poked into the
//! simulator, values worked by hand from the datasheet formulas (as python-sense-hat computes).

use embedded_hal::delay::DelayNs;
use sensehat_monitor::board::sim::{SimChip, SimSenseHat, World};
use sensehat_monitor::board::{NoDelay, SenseHat, Sensor};
use sensehat_monitor::drivers::hts221::{Calibration, Hts221};
use sensehat_monitor::drivers::lps25h::Lps25h;
use sensehat_monitor::drivers::lsm9ds1::{FullScale, Lsm9ds1Accel};
use sensehat_monitor::drivers::Error;

/// A frozen board whose output registers only change when a test pokes them.
fn frozen() -> SimSenseHat {
    let sim = SimSenseHat::new();
    sim.freeze();
    sim
}

// HTS221: the simulator's calibration (H0 33 %rH at -1000, H1 75 %rH at 7400; T0 18.75 degC at
// 300, T1 35 degC at 950) interpolates raw outputs, including below 0 degC.
#[test]
fn hts221_converts_with_factory_calibration() {
    let sim = frozen();
    let mut hts = Hts221::new(sim.bus());
    let cal = hts.init(&mut NoDelay).unwrap();
    assert_eq!(
        (cal.h0_rh, cal.h1_rh, cal.t0_celsius, cal.t1_celsius),
        (33.0, 75.0, 18.75, 35.0)
    );
    // CTRL_REG1 and AV_CONF as RTIMULib writes them.
    assert_eq!(sim.peek(SimChip::Hts221, 0x20), 0x87);
    assert_eq!(sim.peek(SimChip::Hts221, 0x10), 0x1B);
    // H_OUT 3200: 33 + 4200 * 42 / 8400 = 54 %rH. T_OUT -500: 18.75 - 800 * 16.25 / 650 = -1.25 degC.
    sim.poke(
        SimChip::Hts221,
        0x28,
        &[3200i16.to_le_bytes(), (-500i16).to_le_bytes()].concat(),
    );
    let m = hts.read().unwrap();
    assert!((m.humidity_rh - 54.0).abs() < 1e-12, "{}", m.humidity_rh);
    assert!(
        (m.temperature_celsius - -1.25).abs() < 1e-12,
        "{}",
        m.temperature_celsius
    );
    // T_OUT -2000: 18.75 - 2300 * 16.25 / 650 = -38.75 degC.
    sim.poke(SimChip::Hts221, 0x2A, &(-2000i16).to_le_bytes());
    assert!((hts.read().unwrap().temperature_celsius - -38.75).abs() < 1e-12);
    // Humidity a little beyond the chip's range is clamped (documented choice), not 104.
    sim.poke(SimChip::Hts221, 0x28, &13200i16.to_le_bytes());
    assert_eq!(hts.read().unwrap().humidity_rh, 100.0);
}

// HTS221: a value far beyond what the chip gives is a garbled transfer, refused rather than
// stored: humidity 138 %rH (not clamped to a plausible 100), a temperature of 819 degC (TEMP_OUT
// -500 with its top bit flipped).
#[test]
fn hts221_refuses_implausible_values() {
    let sim = frozen();
    let mut hts = Hts221::new(sim.bus());
    hts.init(&mut NoDelay).unwrap();
    sim.poke(
        SimChip::Hts221,
        0x28,
        &[20000i16.to_le_bytes(), (-500i16).to_le_bytes()].concat(),
    );
    match hts.read() {
        Err(Error::Implausible { value, unit, .. }) => assert_eq!((value, unit), (138.0, "%rH")),
        other => panic!("expected Implausible, got {other:?}"),
    }
    let flipped = (-500i16 as u16 ^ 0x8000) as i16;
    sim.poke(
        SimChip::Hts221,
        0x28,
        &[3200i16.to_le_bytes(), flipped.to_le_bytes()].concat(),
    );
    match hts.read() {
        Err(Error::Implausible { value, unit, .. }) => {
            assert_eq!(unit, "degC");
            assert!(value > 800.0, "{value}");
        }
        other => panic!("expected Implausible, got {other:?}"),
    }
}

// HTS221: calibration that would divide by zero is an error, never NaN.
#[test]
fn hts221_rejects_corrupt_calibration() {
    let sim = frozen();
    // T1_OUT = T0_OUT.
    sim.poke(SimChip::Hts221, 0x3E, &300i16.to_le_bytes());
    let mut hts = Hts221::new(sim.bus());
    assert!(matches!(
        hts.init(&mut NoDelay),
        Err(Error::BadCalibration { .. })
    ));
    assert!(matches!(hts.read(), Err(Error::NotInitialised { .. })));
}

// LPS25H: 24-bit codes at 4096 LSB/hPa, negative codes sign-extended; temperature 42.5 + T/480.
#[test]
fn lps25h_converts_positive_and_negative_codes() {
    let sim = frozen();
    let mut lps = Lps25h::new(sim.bus());
    lps.init(&mut NoDelay).unwrap();
    for (reg, v) in [(0x20, 0xC4), (0x10, 0x05), (0x2E, 0xC0), (0x21, 0x40)] {
        assert_eq!(sim.peek(SimChip::Lps25h, reg), v, "register {reg:#x}");
    }
    // 0x3F5400 = 4_150_272 = 1013.25 hPa; TEMP_OUT -9600 = 22.5 degC.
    sim.poke(SimChip::Lps25h, 0x28, &[0x00, 0x54, 0x3F]);
    sim.poke(SimChip::Lps25h, 0x2B, &(-9600i16).to_le_bytes());
    let m = lps.read().unwrap();
    assert_eq!((m.pressure_hpa, m.temperature_celsius), (1013.25, 22.5));
    // 0xFFF000 = -4096 = -1 hPa (a negative 24-bit code); 0x800000 = -2048 hPa. No working
    // chip gives them: they are refused, with the value read.
    for (bytes, hpa) in [([0x00, 0xF0, 0xFF], -1.0), ([0x00, 0x00, 0x80], -2048.0)] {
        sim.poke(SimChip::Lps25h, 0x28, &bytes);
        match lps.read() {
            Err(Error::Implausible { value, .. }) => assert_eq!(value, hpa),
            other => panic!("expected Implausible, got {other:?}"),
        }
    }
}

// LSM9DS1: every full scale writes its FS bits and converts with its sensitivity; X and Y are
// negated as in RTIMULib.
#[test]
fn lsm9ds1_every_full_scale() {
    for (fs, bits, mg) in [
        (FullScale::G2, 0b00, 0.061),
        (FullScale::G4, 0b10, 0.122),
        (FullScale::G8, 0b11, 0.244),
        (FullScale::G16, 0b01, 0.732),
    ] {
        let sim = frozen();
        let mut acc = Lsm9ds1Accel::with_full_scale(sim.bus(), fs);
        acc.init(&mut NoDelay).unwrap();
        let ctrl6 = sim.peek(SimChip::Lsm9ds1Accel, 0x20);
        assert_eq!((ctrl6 >> 3) & 0b11, bits, "{fs:?}");
        assert_eq!(ctrl6 >> 5, 0b011, "119 Hz");
        assert_eq!(
            sim.peek(SimChip::Lsm9ds1Accel, 0x22) & 0x44,
            0x44,
            "IF_ADD_INC and BDU"
        );
        let raw: [i16; 3] = [1000, -2000, 4096];
        sim.poke(
            SimChip::Lsm9ds1Accel,
            0x28,
            &raw.iter()
                .flat_map(|v| v.to_le_bytes())
                .collect::<Vec<u8>>(),
        );
        let a = acc.read().unwrap();
        let s = mg / 1000.0;
        assert_eq!(
            (a.x_g, a.y_g, a.z_g),
            (-1000.0 * s, 2000.0 * s, 4096.0 * s),
            "{fs:?}"
        );
    }
}

// WHO_AM_I: a wrong chip is an error naming the address and what was read.
#[test]
fn wrong_chip_is_named() {
    let sim = frozen();
    sim.poke(SimChip::Lps25h, 0x0F, &[0xB1]);
    let e = Lps25h::new(sim.bus()).init(&mut NoDelay).unwrap_err();
    assert_eq!(
        e.to_string(),
        "the device at address 0x5c is not a LPS25H: WHO_AM_I reads 0xb1, expected 0xbd"
    );
}

// A chip missing at start-up fails each sample, with the sensor, bus and address in the error,
// and is initialised again at each: the board starts, so the agent keeps delivering what its
// spool holds, and samples again once the chip answers. It used to make start-up fail, and the
// agent exit.
#[test]
fn a_chip_missing_at_start_fails_samples_not_the_board() {
    let sim = SimSenseHat::new();
    sim.set_present(SimChip::Lsm9ds1Accel, false);
    let mut hat = SenseHat::init("/dev/i2c-1", sim.bus(), sim.bus(), sim.bus(), NoDelay)
        .expect("the board starts with two sensors of three");
    let (result, _) = hat.sample(std::time::Instant::now());
    let e = result.expect_err("a sample without an accelerometer");
    let msg = e.to_string();
    assert!(msg.contains("0x6a") && msg.contains("/dev/i2c-1"), "{msg}");
    assert!(
        !hat.health()[2].is_ok(),
        "the accelerometer, third in Sensor::ALL"
    );
    sim.set_present(SimChip::Lsm9ds1Accel, true);
    let (result, _) = hat.sample(std::time::Instant::now());
    assert!(result.is_ok(), "{result:?}");
}

// No chip answering at all (no Sense HAT, or another bus) fails start-up at once, naming the
// first sensor, its bus and address.
#[test]
fn no_chip_answering_fails_board_init() {
    let sim = SimSenseHat::new();
    for chip in [SimChip::Hts221, SimChip::Lps25h, SimChip::Lsm9ds1Accel] {
        sim.set_present(chip, false);
    }
    let e = match SenseHat::init("/dev/i2c-1", sim.bus(), sim.bus(), sim.bus(), NoDelay) {
        Err(e) => e,
        Ok(_) => panic!("init succeeded with no chip"),
    };
    assert_eq!(e.sensor, Sensor::Hts221);
    let msg = e.to_string();
    assert!(msg.contains("0x5f") && msg.contains("/dev/i2c-1"), "{msg}");
}

// Right after init a chip has converted nothing and its outputs read zero: the first sample
// waits for each chip's STATUS to say a conversion is ready, instead of storing 0 hPa, a
// humidity worked out from zero, or no gravity.
#[test]
fn the_first_sample_waits_for_each_chips_first_conversion() {
    let sim = SimSenseHat::new();
    for chip in [SimChip::Hts221, SimChip::Lps25h, SimChip::Lsm9ds1Accel] {
        sim.set_warm_up(chip, 3);
    }
    let mut hat = SenseHat::init("sim", sim.bus(), sim.bus(), sim.bus(), NoDelay).unwrap();
    let r = hat.sample(std::time::Instant::now()).0.unwrap();
    assert!(r.pressure_hpa > 900.0, "{}", r.pressure_hpa);
    assert!(r.acceleration.z_g > 0.5, "{}", r.acceleration.z_g);
    // The simulated room: humidity well away from what a zero output would give.
    let zero = hts221_humidity_from_zero(&sim);
    assert!(
        (r.humidity_rh - zero).abs() > 1.0,
        "{} vs {zero}",
        r.humidity_rh
    );
}

/// The humidity the HTS221 driver makes of a zero HUMIDITY_OUT with the simulator's calibration.
fn hts221_humidity_from_zero(sim: &SimSenseHat) -> f64 {
    let mut raw = [0u8; 16];
    for (i, b) in raw.iter_mut().enumerate() {
        *b = sim.peek(SimChip::Hts221, 0x30 + i as u8);
    }
    Calibration::from_registers(&raw).humidity_rh(0)
}

// A chip that answers but never converts fails its initialisation with the chip, its address
// and what STATUS reads (said by each sample's error), rather than giving its reset values as
// readings.
#[test]
fn a_chip_that_never_converts_fails_init_clearly() {
    let sim = SimSenseHat::new();
    sim.set_warm_up(SimChip::Lps25h, u32::MAX);
    let mut hat = SenseHat::init("/dev/i2c-1", sim.bus(), sim.bus(), sim.bus(), NoDelay).unwrap();
    let e = match hat.sample(std::time::Instant::now()).0 {
        Ok(r) => panic!("a sample from a chip that never converts: {r:?}"),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains("LPS25H") && e.contains("0x5c") && e.contains("produced no reading"),
        "{e}"
    );
}

// The world encoded by the simulator comes back through the drivers within one LSB.
#[test]
fn simulated_world_round_trips_through_the_drivers() {
    let sim = SimSenseHat::new();
    let mut hat = SenseHat::init("sim", sim.bus(), sim.bus(), sim.bus(), NoDelay).unwrap();
    let world = World {
        humidity_rh: 61.3,
        temperature_celsius: -12.4,
        pressure_hpa: 987.6,
        accel_g: [0.5, -0.25, 0.97],
    };
    sim.set_world(world);
    let r = hat.sample(std::time::Instant::now()).0.unwrap();
    assert!((r.humidity_rh - 61.3).abs() < 0.01, "{}", r.humidity_rh);
    assert!(
        (r.temperature_celsius - -12.4).abs() < 0.02,
        "{}",
        r.temperature_celsius
    );
    assert!((r.pressure_hpa - 987.6).abs() < 0.001, "{}", r.pressure_hpa);
    assert!((r.acceleration.x_g - 0.5).abs() < 0.001);
    assert!((r.acceleration.y_g - -0.25).abs() < 0.001);
    assert!((r.acceleration.z_g - 0.97).abs() < 0.001);
}

/// A delay that only adds up what it is asked to wait, so warm-up tests run at once and can
/// still see every pause the driver made.
#[derive(Default)]
struct Recorded {
    ns: u64,
}

impl DelayNs for Recorded {
    fn delay_ns(&mut self, ns: u32) {
        self.ns += u64::from(ns);
    }
}

// Each driver's init waits on the delay it is given, one 5 ms pause per STATUS read that says
// "no conversion yet" (the LSM9DS1 also waits 100 ms after its reboot), and then reads values.
#[test]
fn init_waits_on_the_given_delay_until_the_first_conversion() {
    let sim = SimSenseHat::new();
    for chip in [SimChip::Hts221, SimChip::Lps25h, SimChip::Lsm9ds1Accel] {
        sim.set_warm_up(chip, 3);
    }
    let mut d = Recorded::default();
    let mut hts = Hts221::new(sim.bus());
    hts.init(&mut d).unwrap();
    assert_eq!(d.ns, 3 * 5_000_000);
    assert!(hts.read().unwrap().humidity_rh > 30.0);

    let mut d = Recorded::default();
    let mut lps = Lps25h::new(sim.bus());
    lps.init(&mut d).unwrap();
    assert_eq!(d.ns, 3 * 5_000_000);
    assert!(lps.read().unwrap().pressure_hpa > 900.0);

    let mut d = Recorded::default();
    let mut acc = Lsm9ds1Accel::new(sim.bus());
    acc.init(&mut d).unwrap();
    assert_eq!(d.ns, 100_000_000 + 3 * 5_000_000);
    assert!(acc.read().unwrap().z_g > 0.5);
}

// A chip that never converts: init gives up after the polls, and the time it reports waiting
// is the time it asked of the delay.
#[test]
fn init_reports_the_time_it_waited_for_a_chip_that_never_converts() {
    let sim = SimSenseHat::new();
    sim.set_warm_up(SimChip::Hts221, u32::MAX);
    let mut d = Recorded::default();
    let mut hts = Hts221::new(sim.bus());
    match hts.init(&mut d) {
        Err(Error::NoReading { waited_ms, .. }) => assert_eq!(waited_ms * 1_000_000, d.ns),
        other => panic!("expected NoReading, got {other:?}"),
    }
    assert!(matches!(hts.read(), Err(Error::NotInitialised { .. })));
}

// A chip reset while running (a power glitch: its registers back at their power-on values,
// switched off, its outputs zero) is noticed at the next sample instead of giving 0 hPa, a
// humidity worked out from zero or no gravity: that sample is skipped with the reason, the
// chip is initialised again, and the next one reads the room. Each chip in turn.
#[test]
fn a_chip_reset_while_running_is_noticed_and_initialised_again() {
    for (chip, sensor) in [
        (SimChip::Hts221, Sensor::Hts221),
        (SimChip::Lps25h, Sensor::Lps25h),
        (SimChip::Lsm9ds1Accel, Sensor::Lsm9ds1),
    ] {
        let sim = SimSenseHat::new();
        let mut hat = SenseHat::init("sim", sim.bus(), sim.bus(), sim.bus(), NoDelay).unwrap();
        assert!(hat.sample(std::time::Instant::now()).0.is_ok());
        sim.reset(chip);
        let e = match hat.sample(std::time::Instant::now()).0 {
            Ok(r) => panic!("{chip:?} reset, yet a reading: {r:?}"),
            Err(e) => e,
        };
        let why = e.of(sensor).unwrap().to_string();
        assert!(why.contains("has lost its settings"), "{why}");
        assert!(why.contains("power supply"), "{why}");
        let r = hat.sample(std::time::Instant::now()).0.unwrap();
        assert!(r.pressure_hpa > 900.0, "{}", r.pressure_hpa);
        assert!(r.acceleration.z_g > 0.5, "{}", r.acceleration.z_g);
        let zero = hts221_humidity_from_zero(&sim);
        assert!((r.humidity_rh - zero).abs() > 1.0, "{}", r.humidity_rh);
    }
}

// A chip that said who it was at start-up and later answers as another (its WHO_AM_I garbled
// after a reset) is said to be glitching, with the reseat and power hint, not asked whether
// the board is a Sense HAT, as at start-up.
#[test]
fn a_wrong_answer_after_start_up_blames_the_chip_not_the_board() {
    let sim = SimSenseHat::new();
    let mut hat = SenseHat::init("sim", sim.bus(), sim.bus(), sim.bus(), NoDelay).unwrap();
    assert!(hat.sample(std::time::Instant::now()).0.is_ok());
    sim.reset(SimChip::Lps25h);
    sim.poke(SimChip::Lps25h, 0x0F, &[0x33]);
    let mut said = Vec::new();
    for _ in 0..2 {
        if let Err(e) = hat.sample(std::time::Instant::now()).0 {
            said.push(e.of(Sensor::Lps25h).unwrap().to_string());
        }
    }
    let wrong = said
        .iter()
        .find(|w| w.contains("WHO_AM_I reads 0x33"))
        .unwrap_or_else(|| panic!("no wrong-chip error: {said:?}"));
    assert!(!wrong.contains("is this a Sense HAT"), "{wrong}");
    assert!(wrong.contains("reseat the Sense HAT"), "{wrong}");
}

// At start-up, a WHO_AM_I of all ones or all zeros is a chip hung or a glitch (nothing drove
// the line), said with the reseat and power hint; another chip's value asks whether the board
// is a Sense HAT.
#[test]
fn a_chip_reading_as_nothing_at_start_up_is_not_taken_for_another_board() {
    for (who, hint) in [
        (0xFF, "reseat the Sense HAT"),
        (0x00, "reseat the Sense HAT"),
        (0x33, "is this a Sense HAT"),
    ] {
        let sim = SimSenseHat::new();
        sim.poke(SimChip::Lps25h, 0x0F, &[who]);
        let mut hat = SenseHat::init("sim", sim.bus(), sim.bus(), sim.bus(), NoDelay).unwrap();
        let e = match hat.sample(std::time::Instant::now()).0 {
            Ok(r) => panic!("WHO_AM_I {who:#04x}, yet a reading: {r:?}"),
            Err(e) => e.of(Sensor::Lps25h).unwrap().to_string(),
        };
        assert!(e.contains(hint), "{who:#04x}: {e}");
    }
}

// A read whose bytes are all 0xFF (nothing drove the data line for that transfer: a loose HAT,
// interference) is not a measurement, though the chip's settings read back fine: the sample
// is skipped with the reason, where it was stored (-0.000244 hPa, a humidity and temperature
// worked out from -1, no gravity). Each chip in turn; put right, the next sample reads it.
#[test]
fn a_read_of_all_0xff_is_refused_not_stored() {
    for (chip, sensor, len) in [
        (SimChip::Hts221, Sensor::Hts221, 4),
        (SimChip::Lps25h, Sensor::Lps25h, 5),
        (SimChip::Lsm9ds1Accel, Sensor::Lsm9ds1, 6),
    ] {
        let sim = SimSenseHat::new();
        let mut hat = SenseHat::init("sim", sim.bus(), sim.bus(), sim.bus(), NoDelay).unwrap();
        assert!(!hat.reads_iio());
        assert!(hat.sample(std::time::Instant::now()).0.is_ok());
        sim.freeze();
        let good: Vec<u8> = (0..len).map(|i| sim.peek(chip, 0x28 + i)).collect();
        sim.poke(chip, 0x28, &vec![0xFF; len as usize]);
        let e = match hat.sample(std::time::Instant::now()).0 {
            Ok(r) => panic!("{chip:?} read all 0xFF, yet a reading: {r:?}"),
            Err(e) => e,
        };
        let why = e.of(sensor).unwrap().to_string();
        assert!(why.contains("every byte 0xFF"), "{why}");
        assert!(why.contains("reseat"), "{why}");
        sim.poke(chip, 0x28, &good);
        assert!(hat.sample(std::time::Instant::now()).0.is_ok(), "{chip:?}");
    }
}

// A pressure no working LPS25H gives (a flipped top bit: I2C has no checksum) is refused, not
// stored: 1013.25 hPa with bit 22 set reads 2037.25 hPa, with bit 23 set -1034.75 hPa.
#[test]
fn an_impossible_pressure_is_refused_not_stored() {
    let sim = frozen();
    let mut lps = Lps25h::new(sim.bus());
    lps.init(&mut NoDelay).unwrap();
    // 1013.25 hPa = 0x3F5400.
    sim.poke(SimChip::Lps25h, 0x28, &[0x00, 0x54, 0x3F]);
    assert_eq!(lps.read().unwrap().pressure_hpa, 1013.25);
    for (high, hpa) in [(0x7F, 2037.25), (0xBF, -1034.75)] {
        sim.poke(SimChip::Lps25h, 0x28, &[0x00, 0x54, high]);
        match lps.read() {
            Err(Error::Implausible { value, .. }) => assert_eq!(value, hpa),
            other => panic!("expected Implausible, got {other:?}"),
        }
    }
    // Beyond the datasheet's 260-1260 hPa but a pressure all the same (a balloon at 20 km).
    sim.poke(SimChip::Lps25h, 0x28, &[0x00, 0x58, 0x00]);
    assert_eq!(lps.read().unwrap().pressure_hpa, 5.5);
}

// A sample in place reads each sensor once: a read that fails makes it give up at once, with
// no retry, no failure recorded and nothing initialised again, so that the sample is taken
// again with its retries on a blocking thread, where the bus's timeouts do not hold up the
// agent's other work. The sample taken again then fails and is recorded as before.
#[test]
fn a_sample_in_place_gives_up_at_the_first_failed_read() {
    let sim = SimSenseHat::new();
    let mut hat = SenseHat::init("sim", sim.bus(), sim.bus(), sim.bus(), NoDelay).unwrap();
    // Initialised, not yet sampled: the first sample initialises nothing more.
    assert!(hat.sample(std::time::Instant::now()).0.is_ok());
    let (r, events) = hat
        .sample_at_once()
        .expect("a healthy board samples at once");
    assert!(r.unwrap().pressure_hpa > 900.0);
    assert!(events.is_empty());

    sim.set_failing(SimChip::Lps25h, true);
    let before = sim.transactions(SimChip::Lps25h);
    assert!(hat.sample_at_once().is_none());
    assert_eq!(
        sim.transactions(SimChip::Lps25h) - before,
        1,
        "one read, no retry"
    );
    assert!(hat.health().iter().all(|h| h.is_ok()));

    let before = sim.transactions(SimChip::Lps25h);
    let (r, _) = hat.sample(std::time::Instant::now());
    assert!(r.unwrap_err().of(Sensor::Lps25h).is_some());
    assert!(sim.transactions(SimChip::Lps25h) - before >= 3, "retried");
    assert!(
        !hat.health()[1].is_ok(),
        "the LPS25H, second in Sensor::ALL"
    );
    // Due to be initialised again: not in place.
    sim.set_failing(SimChip::Lps25h, false);
    assert!(hat.sample_at_once().is_none());
}
