"""The atmosphere behind the embedded source (`seqvit synth`): it needs no credentials and no GPU.

The fields come from a flow that a forecast model has to learn to advect:

* A nonlinear barotropic vorticity equation on a latitude-longitude channel (periodic in
  longitude, free-slip walls at the poles), pseudo-spectral: Fourier in longitude, sine/cosine
  series in latitude, truncated at 2/3 of the grid so the products are alias-free; RK4 with
  substeps when the wind needs them. It is forced by relaxation of the zonal mean towards
  seasonal mid-latitude jets, by seeded red-noise vorticity at synoptic scales and by the flow
  over seeded mountains; beta, linear drag and hyperdiffusion. The channel-mean zonal wind (the
  one flow a sine series cannot hold) is carried as a uniform wind and applied exactly.
* Temperature at 850 and 500 hPa are tracers advected by that flow (0.6 times as fast at 850)
  and relaxed to an equilibrium with a mid-latitude gradient, a seasonal cycle of opposite sign
  in the two hemispheres and a seeded land/sea pattern (land: larger seasonal amplitude).
* 2 m temperature relaxes towards the 850 hPa temperature plus a lapse-rate offset (fast over
  land, where anomalies are amplified; slower over sea, which leans on a lagged sea-surface
  temperature), plus a diurnal cycle in local solar time, mostly over land.
* Geopotential at 850 hPa is geostrophic on the sphere (zonal mean from the zonal-mean wind,
  eddies f cos(lat) psi'); above it adds the hypsometric thickness of the temperature. Winds
  come from the streamfunction, stronger aloft. Other levels (100-1000 hPa) are inter- or
  extrapolated in log-pressure from 850 and 500 hPa.

The dynamics live on a channel, not a sphere: a degree of longitude is as long at 60N as at the
equator. The zonal wind written out is the channel wind times cos(latitude), so that
u / (a cos(lat)) is exactly the rate at which the fields move in longitude, and it vanishes at
the poles; scalars are blended to their zonal mean within a few degrees of the poles.
Deterministic: the same config and seed give bit-identical files (single precision, numpy/scipy
on one thread; across machines with different FFT code paths the bits may differ).
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field

import numpy as np
import scipy.fft as sfft

EARTH_RADIUS_M = 6.371e6
GRAVITY = 9.80665
DRY_AIR_GAS_CONSTANT = 287.05
CORIOLIS_F0 = 1.0e-4  # for the mountains' vorticity source
EARTH_ROTATION = 7.292e-5
SECONDS_PER_HOUR = 3600.0
SECONDS_PER_DAY = 86400.0
RK4_STABLE_COURANT = 2.8  # RK4 is stable to 2.83 on the imaginary axis; hyperdiffusion adds margin
MAX_STEP_HOURS = 2
DAYS_PER_YEAR = 365.25


# --------------------------------------------------------------------------------------------
# What the model needs of the config (seqvit.data.synthetic.settings_from_config reads it)


@dataclass(frozen=True)
class SynthSettings:
    """What the generator reads from the config, checked once."""

    seed: int
    nlat: int
    nlon: int
    spinup_days: float
    years: tuple[int, ...]
    months: tuple[int, ...]
    hours: tuple[int, ...]
    single_level: tuple[str, ...]
    pressure_level: tuple[str, ...]
    levels: tuple[float, ...]  # hPa, descending as the CDS stores them

    @property
    def latitude(self) -> np.ndarray:
        return np.linspace(90.0, -90.0, self.nlat)

    @property
    def longitude(self) -> np.ndarray:
        return np.arange(self.nlon) * (360.0 / self.nlon)


# --------------------------------------------------------------------------------------------
# Physics parameters (fixed: tuned so the demo has a realistic skill ladder, see module doc)


@dataclass(frozen=True)
class Physics:
    # mean flow (m/s, degrees): relaxation target, seasonally moving jets
    jet_winter_speed: float = 30.0
    jet_summer_speed: float = 15.0
    jet_winter_lat: float = 38.0
    jet_summer_lat: float = 48.0
    jet_width_deg: float = 11.0
    tropical_easterly: float = -4.0
    jet_relax_days: float = 6.0
    # eddies: red-noise vorticity forcing in a band of total wavenumbers
    forcing_rms: float = 5.0e-11  # s^-2
    forcing_wavenumbers: tuple[float, float] = (5.0, 12.0)
    forcing_memory_days: float = 1.0
    drag_days: float = 12.0
    beta: float = 1.6e-11  # 2 Omega cos(45) / a
    mountain_height_m: float = 2000.0
    topography_scale_height_m: float = 10000.0
    hyperdiffusion_hours: float = 3.0  # e-folding at the grid scale
    # temperature tracers
    alpha_850: float = 0.6  # 850 hPa wind / 500 hPa wind
    relax_850_days: float = 6.0
    relax_500_days: float = 8.0
    # 2 m temperature lag behind the 850 hPa temperature
    surface_lag_land_days: float = 0.25
    surface_lag_sea_days: float = 0.4
    sea_surface_weight: float = 0.3  # how much 2 m temperature over sea leans on the sea surface
    land_amplification: float = 0.8  # extra 2 m anomaly over land per K of 850 hPa anomaly
    diurnal_amplitude_land: float = 2.0
    diurnal_amplitude_sea: float = 0.15
    land_fraction: float = 0.3


# --------------------------------------------------------------------------------------------
# Spectral machinery on the channel: x = a * lon, y = a * (lat + 90 deg) in [0, pi a].
# "C" fields are cosine series in y (even at the walls: temperature, u); "S" fields are sine
# series in y (zero at the walls: vorticity, streamfunction, v). Arrays are (lat ascending, lon).


REAL = np.float32  # the dynamics run in single precision: twice as fast, and chaos hides the rest
COMPLEX = np.complex64


def _along_y(transform, coeffs: np.ndarray) -> np.ndarray:
    """Apply a real type-1 DCT/DST along latitude (axis -2) to complex coefficients.

    Viewing the complex numbers as pairs of reals transforms real and imaginary parts in one
    call, about twice as fast as scipy's complex path.
    """
    as_real = np.ascontiguousarray(coeffs).view(coeffs.real.dtype)
    return transform(as_real, type=1, axis=-2).view(coeffs.dtype)


class _Channel:
    """Grid, truncated spectral coefficients and transforms of the channel.

    Coefficients are kept up to 2/3 of the grid's wavenumbers in both directions, so that the
    quadratic products of the advection terms are free of aliasing.
    """

    def __init__(self, nlat: int, nlon: int):
        self.nlat, self.nlon = nlat, nlon
        self.lat = np.linspace(-90.0, 90.0, nlat)  # ascending internally; flipped on output
        self.lon = np.arange(nlon) * (360.0 / nlon)
        self.m_max = nlon // 3
        self.n_max = (2 * (nlat - 1)) // 3
        m = np.arange(self.m_max + 1, dtype=np.float64)
        n = np.arange(self.n_max + 1, dtype=np.float64)  # n: wavenumber of cos(n y'), y' = y/a in [0, pi]
        a = EARTH_RADIUS_M
        self.ikx = (1j * m / a)[None, :].astype(COMPLEX)
        self.n_over_a = (n / a)[:, None].astype(REAL)
        self.k2_c = ((m[None, :] ** 2 + n[:, None] ** 2) / a**2).astype(REAL)
        self.k2_s = self.k2_c[1:]
        # total wavenumber normalized by the truncation, for the hyperdiffusion
        self.kk_c = np.sqrt((m[None, :] / self.m_max) ** 2 + (n[:, None] / self.n_max) ** 2)
        self.kk_s = self.kk_c[1:]
        self.total_index_s = np.sqrt(m[None, :] ** 2 + n[1:, None] ** 2)
        self.max_wavenumber_x = self.m_max / a
        self.max_wavenumber_y = self.n_max / a

    # transforms (scipy's default norms: type-1 dct/idct and dst/idst are exact inverses)
    def to_c(self, field: np.ndarray) -> np.ndarray:
        along_x = sfft.rfft(np.asarray(field, dtype=REAL), axis=-1)[..., : self.m_max + 1]
        return _along_y(sfft.dct, along_x)[..., : self.n_max + 1, :]

    def from_c(self, coeffs: np.ndarray) -> np.ndarray:
        padded = np.zeros(coeffs.shape[:-2] + (self.nlat, coeffs.shape[-1]), dtype=COMPLEX)
        padded[..., : self.n_max + 1, :] = coeffs
        return sfft.irfft(_along_y(sfft.idct, padded), n=self.nlon, axis=-1)

    def to_s(self, interior: np.ndarray) -> np.ndarray:
        """Sine coefficients of a field given on the interior latitudes (it is zero at the poles)."""
        along_x = sfft.rfft(np.asarray(interior, dtype=REAL), axis=-1)[..., : self.m_max + 1]
        return _along_y(sfft.dst, along_x)[..., : self.n_max, :]

    def from_s_interior(self, coeffs: np.ndarray) -> np.ndarray:
        padded = np.zeros(coeffs.shape[:-2] + (self.nlat - 2, coeffs.shape[-1]), dtype=COMPLEX)
        padded[..., : self.n_max, :] = coeffs
        return sfft.irfft(_along_y(sfft.idst, padded), n=self.nlon, axis=-1)

    def from_s(self, coeffs: np.ndarray) -> np.ndarray:
        interior = self.from_s_interior(coeffs)
        pad = [(0, 0)] * (interior.ndim - 2) + [(1, 1), (0, 0)]
        return np.pad(interior, pad)

    # y-derivatives swap the series: d/dy sum b_n sin(n y') = sum n b_n cos(n y') / a and
    # d/dy sum a_n cos(n y') = -sum n a_n sin(n y') / a. With scipy's type-1 normalizations the
    # coefficients map one to one (checked in tests/test_synthetic.py).
    def dy_s_to_c(self, coeffs_s: np.ndarray) -> np.ndarray:
        out = np.zeros(coeffs_s.shape[:-2] + (self.n_max + 1, coeffs_s.shape[-1]), dtype=COMPLEX)
        out[..., 1:, :] = self.n_over_a[1:] * coeffs_s
        return out

    def dy_c_to_s(self, coeffs_c: np.ndarray) -> np.ndarray:
        return -self.n_over_a[1:] * coeffs_c[..., 1:, :]


# --------------------------------------------------------------------------------------------
# Fixed geography


def _smooth_random_field(channel: _Channel, rng: np.random.Generator, scale_index: float) -> np.ndarray:
    """A seeded smooth random field (cosine series in latitude), zero mean and unit std."""
    shape = channel.k2_c.shape
    coeffs = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
    total = np.sqrt(channel.k2_c) * EARTH_RADIUS_M
    coeffs *= np.exp(-((total / scale_index) ** 2))
    coeffs[0, 0] = 0.0
    values = channel.from_c(coeffs)
    return (values - values.mean()) / values.std()


@dataclass
class _Geography:
    land: np.ndarray  # land fraction 0..1, (lat ascending, lon)
    height_m: np.ndarray  # surface height, zero at sea and at the poles


def _make_geography(channel: _Channel, rng: np.random.Generator, physics: Physics) -> _Geography:
    continents = _smooth_random_field(channel, rng, scale_index=5.0)
    threshold = np.quantile(continents, 1.0 - physics.land_fraction)
    land = 1.0 / (1.0 + np.exp(-(continents - threshold) / 0.12))
    ranges = _smooth_random_field(channel, rng, scale_index=9.0)
    coslat = np.cos(np.deg2rad(channel.lat))[:, None]
    height = physics.mountain_height_m * land * np.clip(0.35 + 0.35 * ranges, 0.0, 1.0) * coslat
    return _Geography(land=land, height_m=height)


# --------------------------------------------------------------------------------------------
# Seasonal forcing


def _season_phase(day_of_year: float) -> float:
    """+1 in mid-January (northern winter), -1 in mid-July."""
    return math.cos(2.0 * math.pi * (day_of_year - 15.0) / DAYS_PER_YEAR)


def _jet_profile(lat_deg: np.ndarray, phase: float, physics: Physics) -> np.ndarray:
    """Zonal wind the flow is relaxed to (m/s); phase > 0 means northern winter."""
    profile = physics.tropical_easterly * np.exp(-((lat_deg / 15.0) ** 2))
    for hemisphere in (1.0, -1.0):
        winterness = 0.5 * (1.0 + hemisphere * phase)  # 1 in this hemisphere's winter
        speed = physics.jet_summer_speed + (physics.jet_winter_speed - physics.jet_summer_speed) * winterness
        centre = physics.jet_summer_lat + (physics.jet_winter_lat - physics.jet_summer_lat) * winterness
        profile = profile + speed * np.exp(-(((hemisphere * lat_deg - centre) / physics.jet_width_deg) ** 2))
    return profile


class _Climate:
    """Equilibrium temperatures (K) on the channel grid for a given day of year."""

    def __init__(self, channel: _Channel, geo: _Geography, sea_surface_weight: float, land_amplification: float):
        lat = np.deg2rad(channel.lat)[:, None]
        self.sinlat = np.sin(lat) * np.ones((1, channel.nlon))
        sin2 = self.sinlat**2
        land = geo.land
        # annual means: flat warm tropics, the gradient in mid-latitudes, cold poles; mountains
        # colder at 850 hPa
        abs_lat = np.sqrt(channel.lat**2 + 1.0)[:, None]  # |lat| without the kink at the equator
        polar = 0.5 * (1.0 + np.tanh((abs_lat - 45.0) / 14.0))
        self.t850_mean = 293.0 - 38.0 * polar - 0.003 * geo.height_m + 2.0 * land * (1 - sin2)
        self.t500_mean = 268.0 - 32.0 * polar
        # seasonal amplitude (K at phase 1, sign of -sin(lat): cold northern winter)
        self.t850_season = -self.sinlat * (5.0 + 10.0 * land)
        self.t500_season = -self.sinlat * (4.0 + 4.0 * land)
        self.land = land
        self.height_m = geo.height_m
        self.sea_surface_weight = sea_surface_weight
        self.land_amplification = land_amplification

    def equilibrium(self, phase: float) -> tuple[np.ndarray, np.ndarray]:
        return self.t850_mean + phase * self.t850_season, self.t500_mean + phase * self.t500_season

    def surface_target(self, phase: float, lagged_phase: float) -> tuple[np.ndarray, np.ndarray]:
        """(slope, intercept): the 2 m temperature relaxes towards slope * T850 + intercept.

        Over land it is T850 plus a lapse-rate offset (less in winter: inversions, less on
        mountains), with the 850 hPa anomaly amplified by the boundary layer; over sea it leans
        on a sea-surface temperature that lags the season by a month.
        """
        t850_equilibrium = self.t850_mean + phase * self.t850_season
        winter = phase * self.sinlat  # > 0 in the local winter, strongest near the poles
        amplification, sea_weight = self.land_amplification, self.sea_surface_weight
        lapse = 8.0 - 6.0 * winter * np.abs(self.sinlat)  # 2 m minus 850 hPa; polar winter inversions
        land_intercept = lapse - 0.0065 * self.height_m - amplification * t850_equilibrium
        sea_surface = self.t850_mean + 8.0 + lagged_phase * 0.5 * self.t850_season
        sea_intercept = (1.0 - sea_weight) * lapse + sea_weight * sea_surface
        slope = self.land * (1.0 + amplification) + (1.0 - self.land) * (1.0 - sea_weight)
        intercept = self.land * land_intercept + (1.0 - self.land) * sea_intercept
        return slope.astype(REAL), intercept.astype(REAL)


# --------------------------------------------------------------------------------------------
# The model


@dataclass
class _State:
    vorticity: np.ndarray  # S coefficients
    temperature: np.ndarray  # C coefficients, [850, 500]
    surface: np.ndarray  # 2 m temperature without the diurnal cycle, on the grid (lat ascending)
    forcing: np.ndarray  # S coefficients of the red-noise vorticity forcing
    # set by the first seasonal update
    jet_vorticity: np.ndarray | None = field(default=None)  # S coefficients of the relaxation target
    temperature_eq: np.ndarray | None = field(default=None)  # C coefficients, [850, 500]


class _Atmosphere:
    """The model state and its time stepping (RK4; hyperdiffusion applied exactly per step)."""

    def __init__(self, settings: SynthSettings, physics: Physics, dt_seconds: float):
        self.settings, self.physics, self.dt = settings, physics, dt_seconds
        self.channel = ch = _Channel(settings.nlat, settings.nlon)
        geo_seed, init_seed, noise_seed = np.random.SeedSequence([settings.seed, 20151]).spawn(3)
        self.geo = _make_geography(ch, np.random.default_rng(geo_seed), physics)
        self.climate = _Climate(ch, self.geo, physics.sea_surface_weight, physics.land_amplification)
        self.coslat = np.cos(np.deg2rad(ch.lat))[:, None]
        self.noise_rng = np.random.default_rng(noise_seed)

        self.topography_s = ch.to_s(CORIOLIS_F0 * self.geo.height_m[1:-1] / physics.topography_scale_height_m)
        self.topography_dx_s = ch.ikx * self.topography_s
        self.beta_ikx = (physics.beta * ch.ikx).astype(COMPLEX)
        self.inv_laplacian_s = (-1.0 / ch.k2_s).astype(REAL)
        self.n_over_a = ch.n_over_a[1:]  # for n >= 1, the y-derivative factors
        self.alpha = np.array([physics.alpha_850, 1.0], dtype=REAL)[:, None, None]
        days = np.array([physics.relax_850_days, physics.relax_500_days])
        self.temperature_rate = (1.0 / (days * SECONDS_PER_DAY)).astype(REAL)[:, None, None]
        # relaxation: the zonal-mean flow towards the jets, the eddies towards rest (drag)
        rates = np.full(ch.k2_s.shape, 1.0 / (physics.drag_days * SECONDS_PER_DAY))
        rates[:, 0] = 1.0 / (physics.jet_relax_days * SECONDS_PER_DAY)
        self.relax_rate = rates.astype(REAL)
        self.surface_lag = (
            self.geo.land * physics.surface_lag_land_days + (1.0 - self.geo.land) * physics.surface_lag_sea_days
        ) * SECONDS_PER_DAY
        self._per_substeps: dict[int, tuple] = {}
        # output helpers
        area = np.cos(np.deg2rad(ch.lat))[:, None] * np.ones((1, ch.nlon))
        self.area_weights = (area / area.sum()).astype(REAL)
        self.coriolis = (2.0 * EARTH_ROTATION * np.sin(np.deg2rad(ch.lat)))[:, None]
        self.coriolis_coslat = (self.coriolis * self.coslat).astype(REAL)
        distance_to_pole = 90.0 - np.abs(ch.lat)
        blend = np.exp(-((distance_to_pole / 6.0) ** 2))
        self.polar_rows = np.flatnonzero(blend > 1e-4)
        self.polar_weight = blend[self.polar_rows, None].astype(REAL)
        self.diurnal_amplitude = (
            physics.diurnal_amplitude_land * self.geo.land + physics.diurnal_amplitude_sea * (1 - self.geo.land)
        ) * np.sqrt(self.coslat)
        self.steps_taken = 0  # substeps included; reported by the tuning scripts

        low, high = physics.forcing_wavenumbers
        band = (ch.total_index_s >= low) & (ch.total_index_s <= high)
        band[:, 0] = False  # zonal means are left to the jet relaxation
        self.forcing_band = band
        self.forcing_decay = math.exp(-dt_seconds / (physics.forcing_memory_days * SECONDS_PER_DAY))
        # coefficient scale giving unit rms in physical space (a fixed probe: the same for every seed)
        self.band_unit = 1.0
        probe = np.random.default_rng(0)
        samples = [ch.from_s_interior(self._band_noise(probe)) for _ in range(8)]
        self.band_unit = 1.0 / float(np.sqrt(np.mean(np.square(samples))))

        # work buffers for the inverse transforms; rows beyond the truncation stay zero
        columns = ch.m_max + 1
        self._cosine_buffer = np.zeros((5, ch.nlat, columns), dtype=COMPLEX)
        self._sine_buffer = np.zeros((4, ch.nlat - 2, columns), dtype=COMPLEX)

        self._last_day: tuple[int, int] | None = None
        self.state = _State(
            vorticity=np.zeros(ch.k2_s.shape, dtype=COMPLEX),
            temperature=np.zeros((2,) + ch.k2_c.shape, dtype=COMPLEX),
            surface=np.zeros((ch.nlat, ch.nlon), dtype=REAL),
            forcing=np.zeros(ch.k2_s.shape, dtype=COMPLEX),
        )
        self._init_rng = np.random.default_rng(init_seed)

    def _band_noise(self, rng: np.random.Generator) -> np.ndarray:
        """S coefficients of random vorticity in the forcing band, about unit rms."""
        noise = rng.standard_normal((2,) + self.forcing_band.shape)
        return ((noise[0] + 1j * noise[1]) * (self.forcing_band * self.band_unit)).astype(COMPLEX)

    def _substep_factors(self, substeps: int) -> tuple:
        """Hyperdiffusion filters and surface relaxation for a step of dt / substeps."""
        if substeps not in self._per_substeps:
            h = self.dt / substeps
            hyper = h / (self.physics.hyperdiffusion_hours * SECONDS_PER_HOUR)
            self._per_substeps[substeps] = (
                np.exp(-hyper * self.channel.kk_s**8).astype(REAL),
                np.exp(-hyper * self.channel.kk_c**8).astype(REAL),
                np.exp(-h / self.surface_lag).astype(REAL),
            )
        return self._per_substeps[substeps]

    # -- slowly varying forcing, updated once per simulated day
    def _update_seasonal(self, when: dt.datetime, initial: bool = False) -> None:
        key = (when.year, when.timetuple().tm_yday)
        if key == self._last_day and not initial:
            return
        self._last_day = key
        ch = self.channel
        day = when.timetuple().tm_yday - 0.5
        phase = _season_phase(day)
        jet = _jet_profile(ch.lat, phase, self.physics)
        jet_c = ch.to_c(np.repeat(jet[:, None], ch.nlon, axis=1))
        self.state.jet_vorticity = -ch.dy_c_to_s(jet_c)  # zeta = -du/dy
        t850, t500 = self.climate.equilibrium(phase)
        self.state.temperature_eq = ch.to_c(np.stack([t850, t500]))
        self.phase = phase
        # The sine series of the streamfunction has no net zonal flow between the walls; the
        # channel-mean wind of the jet profile is carried separately, as a uniform flow.
        self.mean_wind = REAL(np.trapezoid(jet) / (ch.nlat - 1))
        self.lagged_phase = _season_phase(day - 30.0)  # the sea surface lags a month
        self.surface_slope, self.surface_intercept = self.climate.surface_target(phase, self.lagged_phase)
        if initial:
            self.state.vorticity = self.state.jet_vorticity + 1e-5 * self._band_noise(self._init_rng)
            self.state.temperature = self.state.temperature_eq.copy()
            self.state.surface = (self.surface_slope * t850 + self.surface_intercept).astype(REAL)

    def _tendency(self, vorticity, temperature, first_stage=False):
        """Time derivatives of the coefficients; on the first stage also T850 and the Courant rate."""
        ch, s = self.channel, self.state
        rows = ch.n_max + 1
        psi = vorticity * self.inv_laplacian_s
        q = vorticity + self.topography_s  # potential vorticity minus the beta term
        cosine_in = self._cosine_buffer
        cosine_in[0, 1:rows] = -self.n_over_a * psi  # u = -dpsi/dy
        cosine_in[1, 1:rows] = self.n_over_a * q  # dq/dy
        cosine_in[2:4, :rows] = ch.ikx * temperature  # dT/dx
        count = 4
        if first_stage:
            cosine_in[4, :rows] = temperature[0]
            count = 5
        cosine = sfft.irfft(_along_y(sfft.idct, cosine_in[:count]), n=ch.nlon, axis=-1)
        sine_in = self._sine_buffer
        sine_in[0, : rows - 1] = ch.ikx * psi  # v = dpsi/dx
        sine_in[1, : rows - 1] = ch.ikx * q  # dq/dx
        sine_in[2:4, : rows - 1] = -self.n_over_a * temperature[:, 1:]  # dT/dy
        sine = sfft.irfft(_along_y(sfft.idst, sine_in), n=ch.nlon, axis=-1)
        u, v = cosine[0], sine[0]  # without the mean wind, which `step` applies exactly
        jacobian = u[1:-1] * sine[1] + v * cosine[1, 1:-1]
        advection = u * cosine[2:4]
        advection[:, 1:-1] += v * sine[2:4]
        advection *= self.alpha
        d_vorticity = -ch.to_s(jacobian) - self.beta_ikx * psi - self.relax_rate * (vorticity - s.jet_vorticity)
        d_vorticity += s.forcing - self.mean_wind * self.topography_dx_s  # mean wind over mountains
        d_temperature = -ch.to_c(advection) - self.temperature_rate * (temperature - s.temperature_eq)
        if not first_stage:
            return d_vorticity, d_temperature, None
        courant_rate = float((np.abs(u[1:-1]) * ch.max_wavenumber_x + np.abs(v) * ch.max_wavenumber_y).max())
        return d_vorticity, d_temperature, (cosine[4], courant_rate)

    def step(self, when: dt.datetime) -> None:
        """Advance by dt from `when`, in equal substeps when the wind is too strong for one."""
        self._update_seasonal(when)
        s, ch = self.state, self.channel
        fresh = self.physics.forcing_rms * self._band_noise(self.noise_rng)
        s.forcing = self.forcing_decay * s.forcing + math.sqrt(1.0 - self.forcing_decay**2) * fresh

        first = self._tendency(s.vorticity, s.temperature, first_stage=True)
        substeps = max(1, math.ceil(self.dt * first[2][1] / RK4_STABLE_COURANT))
        filter_s, filter_c, surface_relax = self._substep_factors(substeps)
        h = self.dt / substeps
        self.steps_taken += substeps
        for index in range(substeps):
            if index:
                first = self._tendency(s.vorticity, s.temperature, first_stage=True)
            z0, t0 = s.vorticity, s.temperature
            k1z, k1t, (t850, _) = first
            k2z, k2t, _ = self._tendency(z0 + (0.5 * h) * k1z, t0 + (0.5 * h) * k1t)
            k3z, k3t, _ = self._tendency(z0 + (0.5 * h) * k2z, t0 + (0.5 * h) * k2t)
            k4z, k4t, _ = self._tendency(z0 + h * k3z, t0 + h * k3t)
            k2z += k3z
            k2t += k3t
            # the uniform mean wind moves everything by an exact phase shift (850 hPa: slower)
            shift = np.exp(-(self.mean_wind * h) * self.alpha * ch.ikx).astype(COMPLEX)
            s.vorticity = (z0 + (h / 6.0) * (k1z + k4z + 2.0 * k2z)) * (filter_s * shift[1])
            s.temperature = (t0 + (h / 6.0) * (k1t + k4t + 2.0 * k2t)) * (filter_c * shift)
            target = self.surface_slope * t850 + self.surface_intercept
            s.surface = target + (s.surface - target) * surface_relax

    # -- diagnostics at output times
    def fields(self, when: dt.datetime) -> dict[str, np.ndarray]:
        """Physical fields (float32, latitude ascending) of the current state, keyed as in the files."""
        self._update_seasonal(when)
        ch, s, settings, physics = self.channel, self.state, self.settings, self.physics
        psi_s = s.vorticity * self.inv_laplacian_s
        u, t850, t500 = ch.from_c(np.concatenate([-ch.dy_s_to_c(psi_s)[None], s.temperature]))
        psi, v = ch.from_s(np.stack([psi_s, ch.ikx * psi_s]))
        u += self.mean_wind
        u *= self.coslat.astype(REAL)  # channel wind -> wind on the sphere (zero at the poles)
        out: dict[str, np.ndarray] = {}
        if "t2m" in settings.single_level:
            out["t2m"] = self._polar_blend((s.surface + self._diurnal(when)).astype(np.float32))
        if not settings.pressure_level:
            return out
        # geostrophic on the sphere: the zonal mean balances the zonal-mean wind,
        # d(phi)/d(lat) = -f a u, and the eddies balance v: phi' = f cos(lat) psi'
        dlat = math.pi / (ch.nlat - 1)
        integrand = self.coriolis[:, 0] * EARTH_RADIUS_M * u.mean(axis=-1)
        zonal = -np.concatenate([[0.0], np.cumsum(0.5 * (integrand[1:] + integrand[:-1]) * dlat)])
        balanced = zonal[:, None] + self.coriolis_coslat * (psi - psi.mean(axis=-1, keepdims=True))
        balanced -= (balanced * self.area_weights).sum()
        phi850 = GRAVITY * 1500.0 + physics.alpha_850 * balanced
        log_span = math.log(850.0 / 500.0)
        names = settings.pressure_level
        stacks = {name: np.empty((len(settings.levels), ch.nlat, ch.nlon), dtype=np.float32) for name in names}
        for index, level in enumerate(settings.levels):
            frac = math.log(850.0 / level) / log_span  # 0 at 850 hPa, 1 at 500 hPa
            alpha = physics.alpha_850 + (1.0 - physics.alpha_850) * frac
            t_level = t850 + (t500 - t850) * frac
            if "t" in stacks:
                stacks["t"][index] = self._polar_blend(t_level)
            if "z" in stacks:
                # hypsometric: temperature linear in log-pressure, so the layer mean is the average
                thickness = (DRY_AIR_GAS_CONSTANT * 0.5 * math.log(850.0 / level)) * (t850 + t_level)
                stacks["z"][index] = self._polar_blend(phi850 + thickness)
            if "u" in stacks:
                stacks["u"][index] = alpha * u
            if "v" in stacks:
                stacks["v"][index] = alpha * v
        out.update(stacks)
        return out

    def _diurnal(self, when: dt.datetime) -> np.ndarray:
        """Diurnal anomaly of 2 m temperature: warmest at 15 local solar time, mostly over land."""
        utc_hours = when.hour + when.minute / 60.0
        local_hours = (utc_hours + self.channel.lon / 15.0) % 24.0
        cycle = np.cos(2.0 * math.pi * (local_hours - 15.0) / 24.0)[None, :]
        summer = -self.phase * self.climate.sinlat  # > 0 in the local summer
        return self.diurnal_amplitude * (1.0 + 0.3 * summer) * cycle

    def _polar_blend(self, values: np.ndarray) -> np.ndarray:
        """Blend a scalar field to its zonal mean within a few degrees of the poles, in place.

        The channel's walls are lines, but a pole on the sphere is one point, where a scalar
        cannot depend on longitude.
        """
        rows, weight = self.polar_rows, self.polar_weight
        zonal = values[rows].mean(axis=-1, keepdims=True)
        values[rows] = weight * zonal + (1.0 - weight) * values[rows]
        return values


# --------------------------------------------------------------------------------------------
# Time stepping and output


def _time_step_seconds(settings: SynthSettings) -> float:
    """The base step: at most MAX_STEP_HOURS and landing on every output hour.

    Stability does not constrain it: steps are split into substeps whenever the Courant number
    of the current wind needs it.
    """
    every = math.gcd(24, *settings.hours)  # every output hour is a multiple of this
    hours = max(h for h in range(1, MAX_STEP_HOURS + 1) if every % h == 0)
    return hours * SECONDS_PER_HOUR


def _first_of_next_month(when: dt.datetime) -> dt.datetime:
    return dt.datetime(when.year + (when.month == 12), when.month % 12 + 1, 1)


def _integration_segments(settings: SynthSettings) -> list[tuple[dt.datetime, dt.datetime]]:
    """The stretches of time the model integrates, as (begin, end).

    Each run of consecutive requested months gets `spinup_days` of integration before it. A gap
    between requested months longer than the spin-up is skipped: the state carries over and
    spins up again under the new season, so that (say) January of three years costs three
    Januaries, not three years. Begins fall on midnight so every output hour is reached exactly.
    """
    spinup = dt.timedelta(days=settings.spinup_days)
    segments: list[tuple[dt.datetime, dt.datetime]] = []
    for year in settings.years:
        for month in settings.months:
            start = dt.datetime(year, month, 1)
            end = _first_of_next_month(start)
            begin = start - spinup
            begin = dt.datetime(begin.year, begin.month, begin.day)
            if segments and begin <= segments[-1][1]:
                segments[-1] = (segments[-1][0], end)
            else:
                segments.append((begin, end))
    return segments


def simulate(settings: SynthSettings, physics: Physics = Physics(), progress: bool = False):
    """Yield (time, fields) at every output time of every requested month, in time order.

    Fields are float32 arrays with latitude ascending (the writer flips them).
    """
    step_seconds = _time_step_seconds(settings)
    segments = _integration_segments(settings)
    atmosphere = _Atmosphere(settings, physics, step_seconds)
    atmosphere._update_seasonal(segments[0][0], initial=True)
    years, months, hours = set(settings.years), set(settings.months), set(settings.hours)

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=sum((end - begin).days for begin, end in segments), unit="day", desc="synth")
    step = dt.timedelta(seconds=step_seconds)
    try:
        for begin, end in segments:
            now = begin
            while now < end:
                if now.month in months and now.year in years and now.hour in hours and now.minute == 0:
                    yield now, atmosphere.fields(now)
                atmosphere.step(now)
                previous, now = now, now + step
                if bar is not None and now.date() != previous.date():
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
